#!/usr/bin/env node
'use strict';
// s3rver as the test suite runs it (tests/conftest.py), with the command-line options of its own bin.
//
// s3rver 3.7.1's filesystem store removes a folder that a DELETE left empty. A PUT into that folder that
// is between its mkdir and its open at that moment fails with ENOENT on a write stream that has no error
// listener, and Node ends the whole server on it. Here only that error is logged: the PUT then fails with
// a 500 (writing its metadata finds the folder gone too) and the client retries it, as on any store's 5xx.
process.on('uncaughtException', (err) => {
  if (err.code === 'ENOENT' && err.syscall === 'open') {
    console.error(`s3rver: a PUT raced a DELETE of its folder and failed: ${err.message}`);
    return;
  }
  console.error(err);
  process.exit(1);
});
require('s3rver/bin/s3rver.js');

"""The errors that stop a sweep at once: found under the wrappers Ray and Ray Train put around them."""

from __future__ import annotations

from tl_ray.errors import StorageError, TrialError
from tl_ray.tune.fail_fast import deterministic_error, root_cause


def test_the_tl_ray_error_is_found_under_rays_and_ray_trains_wrappers():
    from ray.exceptions import RayTaskError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    cause = StorageError("model.weights file 'w.weights.h5' does not exist.")
    single = RayTaskError("train", "Traceback ...", cause).as_instanceof_cause()
    assert root_cause(single) is cause
    group = WorkerGroupError("worker 1 failed", {0: RuntimeError("collective aborted"),
                                                 1: UserExceptionWithTraceback(cause, "Traceback ...")})
    wrapped = RayTaskError("tune_trial", "Traceback ...", group).as_instanceof_cause()
    found = deterministic_error(wrapped)
    assert type(found) is StorageError and str(found) == str(cause) and found is not cause
    assert deterministic_error(RayTaskError("f", "tb", RuntimeError("OOM")).as_instanceof_cause()) is None
    assert deterministic_error(TrialError("no trial produced a checkpoint")) is None  # retrying may fix it

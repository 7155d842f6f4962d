"""The experiment spec: pydantic models of the YAML file, loading, and ``--set a.b=c`` overrides.

Unknown keys are rejected; the dotted names ``--set`` takes are also what ``tune.space`` searches over.
"""

from tl_ray.spec._base import DEFAULT_STORE, PositiveInt
from tl_ray.spec.data import AugmentSpec, DataSpec, IngestSource
from tl_ray.spec.experiment import RunSpec, Spec
from tl_ray.spec.load import apply_overrides, load_spec, parse_override, validate
from tl_ray.spec.model import FreezeSpec, HeadSpec, ModelSpec
from tl_ray.spec.paths import set_path
from tl_ray.spec.serve import AutoscalingSpec, CanarySpec, PromoteSpec, ServeSpec
from tl_ray.spec.train import EarlyStoppingSpec, LRScheduleSpec, PhaseSpec, TrainSpec
from tl_ray.spec.tune import StageSpec, TuneSpec

__all__ = [
    "DEFAULT_STORE", "AugmentSpec", "AutoscalingSpec", "CanarySpec", "DataSpec", "EarlyStoppingSpec", "FreezeSpec",
    "HeadSpec", "IngestSource", "LRScheduleSpec", "ModelSpec", "PhaseSpec", "PositiveInt", "PromoteSpec", "RunSpec",
    "ServeSpec", "Spec", "StageSpec", "TrainSpec", "TuneSpec", "apply_overrides", "load_spec", "parse_override",
    "set_path", "validate",
]

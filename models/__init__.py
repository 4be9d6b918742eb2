"""convrate.models: the torch side -- checkpoints, zoo, symmetries, defenses, curvature, checks.

Spectral quantities here are *estimated* on real networks (Hessian-vector products,
Lanczos with residuals) and compared, through ``convrate.theory.core.compare``, with the
bound functions of ``convrate.theory.bounds``. transformers is imported only when a
Hugging Face model is loaded.
"""
from __future__ import annotations

from convrate.models.audit import AuditProfile, audit, load_for_audit
from convrate.models.checks import (
    check_t1,
    check_t2,
    check_w,
    dense_reparameterization,
    sequential_error_bound,
    w_sweep,
)
from convrate.models.curvature import (
    EigenEstimate,
    NondeterministicLossError,
    Objective,
    benchmark_hvp,
    dense_hessian,
    extreme_eigenvalues,
    hutchinson_trace,
    lanczos,
    resolve_device,
)
from convrate.models.defense import (
    PRESERVATION_TOLERANCE,
    Defense,
    DefenseResult,
    DiagonalScaling,
    Identity,
    Preservation,
    SpecDef,
    defense_by_name,
)
from convrate.models.fplr import ArchitectureMismatchError, FPLRFit, infer_reparameterization
from convrate.models.io import LoadedModel, load_model, save_model, zoo_model
from convrate.models.recovery import (
    R1Module,
    canonicalize,
    distance_to_canonical,
    r1_extra_parameters,
    r1_module,
)
from convrate.models.families import PERMUTATION_KINDS, discover_symmetries
from convrate.models.families.llama import fold_elements
from convrate.models.llm_rotation import adam_under_rotation
from convrate.models.sensitivity import StepSensitivity, step_sensitivity
from convrate.models.symmetry import (
    Slot,
    TorchReparameterization,
    TorchSymmetry,
    describe,
    random_element,
)
from convrate.models.zoo import cache_dir, digits_cnn, digits_data, digits_mlp, minilm, minilm_path
from convrate.models.zoo import LlamaTrainConfig, llama_tiny
from convrate.models.inserted import InsertedLinear, InsertedResult, InsertedSpecDef
from convrate.models.chains import Chain, find_chains, merge_chains

__all__ = [
    "LoadedModel", "load_model", "save_model", "zoo_model",
    "cache_dir", "digits_data", "digits_mlp", "digits_cnn", "minilm", "minilm_path",
    "llama_tiny", "LlamaTrainConfig",
    "Slot", "TorchSymmetry", "TorchReparameterization", "discover_symmetries", "describe", "random_element",
    "PERMUTATION_KINDS", "fold_elements", "adam_under_rotation",
    "R1Module", "r1_module", "r1_extra_parameters", "canonicalize", "distance_to_canonical",
    "infer_reparameterization", "FPLRFit", "ArchitectureMismatchError", "audit", "AuditProfile", "load_for_audit",
    "Defense", "DefenseResult", "Preservation", "SpecDef", "DiagonalScaling", "Identity", "defense_by_name",
    "PRESERVATION_TOLERANCE",
    "Objective", "EigenEstimate", "NondeterministicLossError", "benchmark_hvp", "dense_hessian",
    "extreme_eigenvalues", "hutchinson_trace", "lanczos", "resolve_device",
    "check_t1", "check_t2", "check_w", "w_sweep", "dense_reparameterization", "sequential_error_bound",
    "InsertedSpecDef", "InsertedLinear", "InsertedResult", "Chain", "find_chains", "merge_chains",
    "step_sensitivity", "StepSensitivity",
]

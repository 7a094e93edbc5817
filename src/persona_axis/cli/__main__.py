"""``python -m persona_axis.cli``: the same as the ``persona-axis`` command."""

from persona_axis.cli import main

main()

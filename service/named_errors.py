"""Error classes named "module:Class" rather than imported, for the command lines.

A command turns some errors into exit codes. Importing their classes up front would import
their modules (pandas, sklearn, distributed, grpc), seconds of a start that `--help` need not
pay; and a class whose module was never imported cannot have been raised."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def imported_errors(names: Sequence[str]) -> tuple[type[BaseException], ...]:
    """The exception classes of `names` ("module:Class") whose modules are imported."""
    classes = []
    for name in names:
        module_name, _, class_name = name.partition(":")
        module = sys.modules.get(module_name)
        if module is not None:
            classes.append(getattr(module, class_name))
    return tuple(classes)

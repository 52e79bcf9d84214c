"""Error classes named "module:Class": found once their module is imported, and only then."""

from __future__ import annotations

import subprocess
import sys

from service.named_errors import imported_errors

_FRESH_PROCESS = """
import sys
from service.named_errors import imported_errors
named = ["service.model.registry:RegistryError", "builtins:KeyError"]
before = [cls.__name__ for cls in imported_errors(named)]
import service.model.registry
after = [cls.__name__ for cls in imported_errors(named)]
print(before, after)
"""


def test_a_class_is_found_only_once_its_module_is_imported():
    """In a fresh process, the registry's error is absent until its module is imported, and
    the order of the names is kept."""
    run = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS], capture_output=True, text=True, check=True
    )

    assert run.stdout.strip() == "['KeyError'] ['RegistryError', 'KeyError']"


def test_an_imported_class_is_the_class_itself():
    """What is caught is the module's own class, not a copy or a name."""
    import json

    assert imported_errors(["json:JSONDecodeError"]) == (json.JSONDecodeError,)
    assert imported_errors([]) == ()

"""Re-executes a test or benchmark script with the test environment's python when the current
one lacks the modules it needs (stdlib only: it runs before those imports).

    from venv_switch import ensure
    if __name__ == "__main__":
        ensure("verify", ["anndata"])
"""
import os
import sys
from importlib.util import find_spec

DEFAULT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "scdl-fs", "test-venv")


def ensure(tool, modules):
    """Returns if every module is importable; else execs the venv python once, or exits 2."""
    if all(find_spec(m) is not None for m in modules):
        return
    python = os.path.join(os.environ.get("SCDL_FS_TEST_VENV", DEFAULT_VENV), "bin", "python")
    flag = f"SCDL_FS_{tool.upper()}_REEXEC"
    if os.path.exists(python) and not os.environ.get(flag):
        os.environ[flag] = "1"
        os.execv(python, [python, os.path.abspath(sys.argv[0]), *sys.argv[1:]])
    print(f"{tool}: needs {', '.join(modules)}; run with the python that scripts/test-env.sh prints", file=sys.stderr)
    sys.exit(2)

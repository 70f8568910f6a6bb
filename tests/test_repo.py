"""The README's two commands: the first installs everything the second needs, and CI runs both as written."""
import ast
import os
import re
import subprocess
import sys
from importlib.metadata import packages_distributions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
    block = re.search(r"```bash\n(.*?)```", open(os.path.join(ROOT, "README.md")).read(), re.S).group(1)
    return block.splitlines()[:2]


def requirements(files):
    """Distribution names pinned by requirement files, following -r includes."""
    names = set()
    for f in files:
        for line in open(os.path.join(ROOT, f)):
            line = line.split("#")[0].strip()
            if line.startswith("-r "):
                names |= requirements([line[3:].strip()])
            elif line:
                names.add(re.split(r"[=<>;\[ ]", line)[0].lower().replace("_", "-"))
    return names


def test_first_command_installs_what_the_tests_import():
    first, second = readme_commands()
    assert second == "python -m pytest -q tests"
    installed = requirements(re.findall(r"-r (\S+)", first))
    local = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")} | {"kernels", "conftest"}
    imported = set()
    for name in os.listdir(os.path.join(ROOT, "tests")):
        if name.endswith(".py"):
            for node in ast.walk(ast.parse(open(os.path.join(ROOT, "tests", name)).read())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    imported.add(node.module.split(".")[0])
                elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "importorskip":
                    imported.add(node.args[0].value)
    third_party = imported - local - set(sys.stdlib_module_names)
    dists = packages_distributions()
    needed = {d.lower().replace("_", "-") for m in third_party for d in dists.get(m, [m])}
    assert needed and needed <= installed, sorted(needed - installed)


def test_ci_runs_the_readme_commands_as_written(tmp_path):
    """.ci/run with stand-ins for pip and python that only record how they are called."""
    log = tmp_path / "calls"
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("#!/bin/sh\n")
    (venv / "python").chmod(0o755)
    (venv / "activate").write_text(f'pip() {{ echo "pip $*" >> {log}; }}\npython() {{ echo "python $*" >> {log}; }}\n')
    fake = tmp_path / "path"
    fake.mkdir()
    (fake / "ldconfig").write_text("#!/bin/sh\necho libEGL.so.1\n")  # Mesa's EGL counts as present: no apt-get
    (fake / "ldconfig").chmod(0o755)
    env = dict(os.environ, WVM_VENV=str(tmp_path / "venv"), PATH=f"{fake}:{os.environ['PATH']}")
    r = subprocess.run(["bash", os.path.join(ROOT, ".ci", "run")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    first, second = readme_commands()
    install = first.split(" && ")[2]
    assert install.startswith("pip install -r") and first.endswith(f"&& {install} && python demo.py")
    assert log.read_text().splitlines() == [install, second]

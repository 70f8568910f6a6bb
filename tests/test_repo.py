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


def module_name(path):
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel.removesuffix(".__init__")


def test_imports_run_one_way():
    """The repository's modules import each other at the top of the file only, and those imports form no cycle."""
    files = [os.path.join(ROOT, f) for f in os.listdir(ROOT) if f.endswith(".py")]
    files += [os.path.join(ROOT, "kernels", f) for f in os.listdir(os.path.join(ROOT, "kernels")) if f.endswith(".py")]
    modules = {module_name(f) for f in files}

    def project(node):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module] if node.level == 0 else []
        return {n for n in names if n in modules or n.split(".")[0] in modules}

    graph, inside = {}, []
    for f in files:
        tree = ast.parse(open(f).read())
        graph[module_name(f)] = set().union(*(project(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))))
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            inside += [f"{module_name(f)}.{fn.name}: {m}" for n in ast.walk(fn)
                       if isinstance(n, (ast.Import, ast.ImportFrom)) for m in project(n)]
    assert not inside
    done, path = set(), []

    def visit(m):  # depth-first; a module met again on the current path closes a cycle
        assert m not in path, " -> ".join(path[path.index(m):] + [m])
        if m not in done:
            path.append(m)
            for n in sorted(graph.get(m, ())):
                visit(n)
            done.add(path.pop())

    for m in sorted(graph):
        visit(m)
    assert graph["wvm"] >= {"model", "value_dit"} and not graph["model"] & {"wvm", "value_dit"}


def test_no_file_refers_to_a_document_outside_the_repository():
    outside = ["SPEC" + ".md", "wan" + "22", "../" + "shared"]  # spelled apart so this file does not match itself
    found = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        for name in names:
            if name.endswith((".py", ".md", ".txt")):
                text = open(os.path.join(folder, name), encoding="utf-8").read()
                found += [f"{os.path.relpath(os.path.join(folder, name), ROOT)}: {o}" for o in outside if o in text]
    assert not found

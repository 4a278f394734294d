"""CI=true turns a missing-test-data skip into a failure, so CI cannot go green without the parity tests."""
import subprocess
import sys

import pytest

from tests.conftest import REPO, missing_data


def test_missing_data_skips_locally(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no golden"):
        missing_data("no golden")


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_missing_data_fails_under_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="no golden.*CI=true"):
        missing_data("no golden")


def test_a_test_needing_absent_reference_data_fails_under_ci_and_skips_otherwise(tmp_path):
    """A real pytest run whose reference folder is missing: CI=true fails, plain runs skip and -rs says why."""
    test = tmp_path / "test_needs_reference.py"
    test.write_text("import tests.conftest as c\n"
                    "def test_it(monkeypatch, tmp_path):\n"
                    "    monkeypatch.setattr(c, 'REFERENCE', tmp_path / 'absent')\n"
                    "    c.require_reference()\n")
    def run(ci):
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **({"CI": ci} if ci else {})}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(test)],
                              cwd=tmp_path, capture_output=True, text=True, env=env)
    local, ci = run(None), run("true")
    assert local.returncode == 0 and "1 skipped" in local.stdout and "reference material not found" in local.stdout
    assert ci.returncode == 1 and "1 failed" in ci.stdout and "CI=true" in ci.stdout


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "export CI=true" in ci
    ci_command = [line for line in ci.splitlines() if line.startswith("python -m pytest")]
    assert ci_command == ["python -m pytest -q -rs"]
    assert f"```bash\nCI=true {ci_command[0]}\n```" in readme


def test_ci_builds_a_fresh_environment_and_runs_the_tests_with_it():
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    at = {line: i for i, line in reversed(list(enumerate(lines)))}
    venv = [line for line in lines if line.startswith("VENV=")]
    assert venv and venv[0].split()[0] == "VENV=.ci-venv"
    assert ".ci-venv" in (REPO / ".gitignore").read_text()
    removed, created = at['rm -rf "$VENV"'], at['"${PYTHON:-python3}" -m venv "$VENV"']
    activated, installed = at['source "$VENV/bin/activate"  # from here on `python` is the fresh environment\'s'], \
        at["python -m pip install --quiet -r requirements-dev.txt"]
    assert removed < created < activated < installed < at["python -m pytest -q -rs"]


def test_the_readme_lists_every_skip_reason_the_tests_can_give():
    """`-rs` prints these; a newcomer looks each one up in the README's skip table."""
    import ast

    readme = (REPO / "README.md").read_text()
    reasons = set()
    files = [p for p in sorted((REPO / "tests").glob("test_*.py")) if p.name != "test_ci_strict.py"]  # not its fakes
    for path in files + [REPO / "tests" / "conftest.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            texts = [node.args[0]] if name in ("skip", "missing_data") and node.args else []
            texts += [kw.value for kw in node.keywords if kw.arg == "reason" and name in ("skipif", "importorskip")]
            for text in texts:
                if isinstance(text, ast.Constant) and isinstance(text.value, str):
                    reasons.add(text.value)
                elif isinstance(text, ast.JoinedStr) and text.values and isinstance(text.values[0], ast.Constant):
                    reasons.add(text.values[0].value.rstrip(" ("))  # the literal start of an f-string
    reasons.discard("")
    assert len(reasons) >= 10
    missing = sorted(r for r in reasons if r.split(" (")[0].split(" at ")[0] not in readme)
    assert missing == [], "README's skip table lacks these"

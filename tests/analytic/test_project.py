"""The README's test command is exactly what CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_test_command_is_the_ci_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    assert len(blocks) >= 2
    main_cmd, test_cmd = blocks[0].strip(), blocks[1].strip()
    assert "python -m benchmarks quickstart" in main_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def _project_files():
    for folder in ("analytic", "continual", "federated", "peft_probe", "benchmarks", "tests", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md") and "__pycache__" not in path.parts:
                yield path
    yield ROOT / "README.md"


def test_every_doc_reference_points_inside_the_repository():
    # Docstrings and docs cite the papers and this repository's docs/, never a planning file that does not ship.
    outside = re.compile(r"\b(METHODS|DESIGN|STYLE|DEVELOPERS)\.md\b|\.\./shared/")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in _project_files() if p.name != "test_project.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if outside.search(line)]
    assert offenders == []
    # Every docs/*.md a file names exists.
    named = {m for p in _project_files() for m in re.findall(r"docs/([a-z_]+\.md)", p.read_text())}
    assert named and all((ROOT / "docs" / name).is_file() for name in named), named

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

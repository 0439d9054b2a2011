"""``--env-file``: a file given explicitly must exist (a typo must not run on defaults); ``./.env`` stays optional."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli.conftest import Invoke


@pytest.mark.parametrize(
    "command", [["generate", "envfile", "--sd-url", "mock://", "--width", "64", "--height", "64"], ["doctor"]]
)
def test_env_file_missing_exits_2_with_one_line(
    sdpipe: Invoke, tmp_path: Path, out_dir: Path, command: list[str]
) -> None:
    missing = tmp_path / "nonexist" / "prod.env"
    result = sdpipe("--env-file", str(missing), *command)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: env file {missing} does not exist (check the path given to --env-file, or leave it out to read ./.env)"
    )
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert not out_dir.exists()


def test_env_file_given_is_read(sdpipe: Invoke, tmp_path: Path) -> None:
    env = tmp_path / "prod.env"
    env.write_text("GRID=3x5\n")
    result = sdpipe("--env-file", str(env), "doctor")
    assert "3x5" in result.stdout, result.output


def test_env_file_default_dotenv_may_be_absent(sdpipe: Invoke, tmp_path: Path) -> None:
    assert not (tmp_path / ".env").exists()
    result = sdpipe("generate", "x", "--sd-url", "mock://", "--width", "64", "--height", "64")
    assert result.exit_code == 0, result.output

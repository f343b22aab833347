"""No Docker engine runs here: the Dockerfile is linted and the compose file is checked by reading it."""

import shutil
import subprocess
from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).with_name("hadolint"))
    result = subprocess.run([hadolint, "--no-color", str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_worker_image_runs_as_a_non_root_user_with_the_project_inside():
    lines = (DOCKER / "Dockerfile").read_text().splitlines()
    assert [line for line in lines if line.startswith("USER ")] == ["USER 10001:10001"]
    for part in ("torch==2.13.0", '".[local,downstream,s3,dask,iceberg]"', "cl100k_base()", "COPY pipeline", "COPY flows", "COPY configs"):
        assert any(part in line for line in lines), part


def test_every_path_the_compose_file_refers_to_exists():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert {"postgres", "prefect-server", "worker"} <= set(compose["services"])
    build = compose["services"]["worker"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).is_file()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), volume
            else:
                assert source in compose["volumes"], f"{volume}: named volume not declared"
    assert "postgresql+asyncpg://" in compose["services"]["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]

"""The production docker-compose file: valid for Compose, and shaped as the design says.

Docker cannot run on CI machines, so the deployment is checked by linting: `docker-compose config`
validates the file against the Compose schema, and the assertions below pin the properties the
design relies on (AOF, health-gated start-up, shared artefacts, one prefetch-1 GPU worker).
"""
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE = DOCKER / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_passes_compose_validation():
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose (Debian package) not installed: schema validation skipped")
    r = subprocess.run(
        [tool, "-f", str(COMPOSE), "config", "-q"],
        env={"POSTGRES_PASSWORD": "lint", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr


def test_services_and_health_checks(compose):
    services = compose["services"]
    assert {"redis", "postgres", "api", "worker-gpu", "worker-tiles", "flower"} <= set(services)
    for name in ("redis", "postgres", "api", "worker-gpu", "worker-tiles", "flower"):
        assert "healthcheck" in services[name], f"{name} has no health check"
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    for name in ("api", "worker-gpu", "worker-tiles"):
        deps = services[name]["depends_on"]
        assert deps["redis"]["condition"] == deps["postgres"]["condition"] == "service_healthy"


def test_api_and_workers_share_settings_and_artefacts(compose):
    api, worker = compose["services"]["api"], compose["services"]["worker-gpu"]
    assert worker["runtime"] == "nvidia"
    # every queue the API sends to has a consumer: jobs (gpu), light work (cpu), live tiles
    consumed = set()
    for name in ("worker-gpu", "worker-tiles"):
        cmd = compose["services"][name]["command"]
        consumed |= set(cmd[cmd.index("--queues") + 1].split(","))
    assert consumed == {"gpu", "cpu", "tiles"}
    for key in ("GEOADAPT_DATABASE_URL", "GEOADAPT_BROKER_URL", "GEOADAPT_DATA_DIR"):
        assert api["environment"][key] == worker["environment"][key]
    assert api["environment"]["GEOADAPT_DATABASE_URL"].startswith("postgresql")
    assert api["environment"]["GEOADAPT_BROKER_URL"].startswith("redis://")
    assert "artefacts:/var/lib/geoadapt" in api["volumes"] and "artefacts:/var/lib/geoadapt" in worker["volumes"]
    assert set(compose["volumes"]) >= {"redis-data", "postgres-data", "artefacts"}


def test_dockerfiles_name_real_entry_points():
    api = (DOCKER / "Dockerfile.api").read_text()
    gpu = (DOCKER / "Dockerfile.worker-gpu").read_text()
    assert "service.app:create_app" in api and "torch" not in api.split("CMD")[0].split("RUN pip")[1]
    assert gpu.startswith("#") and "FROM nvidia/cuda" in gpu and "mmcv==2.1.0" in gpu
    from service.app import create_app  # the factory the API image starts

    assert callable(create_app)


def test_workers_scale_and_a_variant_takes_every_gpu_of_its_host(compose):
    services = compose["services"]
    workers = {n: s for n, s in services.items() if n.startswith("worker")}
    assert {"worker", "worker-gpu", "worker-gpu-all", "worker-tiles"} <= set(workers)
    for name, s in workers.items():  # `docker compose up --scale NAME=N` needs both
        assert "container_name" not in s and "ports" not in s, name
    gpu_all = services["worker-gpu-all"]
    assert gpu_all["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert gpu_all["environment"]["NVIDIA_VISIBLE_DEVICES"] == "all" and gpu_all["profiles"] == ["multi-gpu"]
    # the variants run the same worker on the same store, broker and artefacts as worker-gpu
    for name in ("worker-gpu-all", "worker"):
        s = services[name]
        assert s["command"] == services["worker-gpu"]["command"] and s["volumes"] == services["worker-gpu"]["volumes"]
        for key in ("GEOADAPT_DATABASE_URL", "GEOADAPT_BROKER_URL", "GEOADAPT_DATA_DIR"):
            assert s["environment"][key] == services["api"]["environment"][key]
    # the CPU worker consumes GPU jobs too: never started unless asked for
    assert services["worker"]["profiles"] == ["cpu"] and "deploy" not in services["worker"]

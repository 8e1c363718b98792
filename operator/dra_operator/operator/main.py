"""`dra-operator run`: the Kopf operator (watches, allocation worker, leader election) and the webhook."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import kopf
import structlog
from kubernetes_asyncio import client as k8s

from dra_operator.admission import configuration, names, tls
from dra_operator.admission import webhook as admission
from dra_operator.allocation.search import PLACEMENTS
from dra_operator.kube.client import SELF_SUBJECT_REVIEWS, Kube, KubeError, NotLeading, load_configuration
from dra_operator.kube.ratelimit import TokenBucket
from dra_operator.operator import handlers, kopfpatch, leader, logs, metrics, periodic
from dra_operator.operator.admitting import AdmissionFeed
from dra_operator.operator.allocating import NVIDIA_DRIVER, Allocator
from dra_operator.operator.devicehealth import DeviceHealthWatch
from dra_operator.operator.events import Recorder
from dra_operator.operator.kopfstorage import NoDiffBase
from dra_operator.operator.leader import ElectionThread, LeaseElector
from dra_operator.operator.poolstatus import DEFAULT_INTERVAL as DEFAULT_POOL_STATUS_INTERVAL
from dra_operator.operator.poolstatus import PoolStatus
from dra_operator.operator.reconciler import WORKERS, Reconciler
from dra_operator.operator.state import SLICES, TAINT_RULES, State
from dra_operator.operator.taintrules import TaintRules
from dra_operator.operator.webhookprocess import AdmissionProcess, ChildOptions
from dra_operator.tlsbuffers import size_read_buffers

log = structlog.get_logger("dra_operator.operator")

#: The client rate limit's default (burst: twice that). kube-scheduler's is 50 (burst 100) for one or two
#: writes per Pod; the operator writes about 3.3 per Pod it places (a claim, its status, the Pod's ungating,
#: a share of the free-devices view), its events apart.
KUBE_API_QPS = 100.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--kubeconfig", default=env("KUBECONFIG"), help="kubeconfig file (default: in-cluster)"
    )
    parser.add_argument("--context", default=None, help="kubeconfig context")
    parser.add_argument(
        "--namespace", "-n", action="append", default=[], help="namespace to watch (repeatable; default: all)"
    )
    parser.add_argument(
        "--log-level",
        default=env("DRA_OPERATOR_LOG_LEVEL", "INFO"),
        help="debug, info, warning or error (default: $DRA_OPERATOR_LOG_LEVEL, else info)",
    )
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: off)")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address /metrics and /readyz listen on")
    parser.add_argument(
        "--liveness", default=None, help="Kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz"
    )
    parser.add_argument("--webhook-host", default="0.0.0.0", help="address the webhook listens on")
    parser.add_argument(
        "--webhook-port", type=int, default=9443, help="HTTPS port of the webhook (default 9443)"
    )
    parser.add_argument(
        "--webhook-url", default=None, help="base URL the API server calls (default https://<host>:<port>)"
    )
    parser.add_argument(
        "--webhook-service", default=None, help="NAME.NAMESPACE[:PORT] of the webhook Service (in-cluster)"
    )
    parser.add_argument(
        "--webhook-config-name",
        default=configuration.CONFIGURATION_NAME,
        help=f"name of the MutatingWebhookConfiguration (default {configuration.CONFIGURATION_NAME})",
    )
    parser.add_argument(
        "--no-webhook-config", action="store_true", help="do not create/update the configuration"
    )
    parser.add_argument(
        "--tls-cert-file",
        default=None,
        help="the webhook's serving certificate (default: one made in memory)",
    )
    parser.add_argument("--tls-key-file", default=None, help="its private key (default: the cert file)")
    parser.add_argument(
        "--tls-ca-file", default=None, help="CA bundle for the configuration (default: the cert)"
    )
    parser.add_argument(
        "--operator-namespace",
        default=env("POD_NAMESPACE"),
        help="the operator's own namespace: excluded from admission, default for the Lease",
    )
    election = parser.add_mutually_exclusive_group()
    election.add_argument(
        "--leader-election",
        dest="leader_election",
        action="store_true",
        default=True,
        help="one replica acts, chosen by a coordination.k8s.io Lease (the default)",
    )
    election.add_argument(
        "--no-leader-election",
        dest="leader_election",
        action="store_false",
        help="act without a Lease: run a single replica only",
    )
    parser.add_argument(
        "--lease-namespace",
        default=None,
        help="namespace of the Lease (default: --operator-namespace, else default)",
    )
    parser.add_argument(
        "--lease-name", default="dra-operator", help="name of the Lease (default dra-operator)"
    )
    parser.add_argument(
        "--lease-seconds",
        type=int,
        default=15,
        help=f"Lease seconds (at least {leader.MIN_LEASE_SECONDS}); renew deadline 2/3, retry 1/5 of that",
    )
    parser.add_argument("--nvidia-driver", default=NVIDIA_DRIVER, help="driver name of NVML GPUs")
    parser.add_argument(
        "--workers",
        type=int,
        default=WORKERS,
        help=f"Pods and claims handled at once (allocation stays serialized; default {WORKERS})",
    )
    parser.add_argument(
        "--kube-api-qps",
        type=float,
        default=KUBE_API_QPS,
        help="requests a second to the API server, after a burst of --kube-api-burst (the leader's Lease "
        f"apart; 0: no limit; default {KUBE_API_QPS:g})",
    )
    parser.add_argument(
        "--kube-api-burst",
        type=int,
        default=None,
        help="requests sent at once before --kube-api-qps paces them (default: twice --kube-api-qps)",
    )
    parser.add_argument(
        "--pool-status-seconds",
        type=float,
        default=DEFAULT_POOL_STATUS_INTERVAL,
        help="how often the leader writes the changed device counts (devices, allocated, free) into the "
        "ResourceSlices' status, the view of `kubectl get resourceslices.resource.dra-operator.io`; 0: never",
    )
    parser.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="binpack",
        help="which node among those that fit: binpack (fewest free devices left: keeps whole nodes free for "
        "large requests), spread (most free), first (name order)",
    )
    parser.add_argument(
        "--device-plugin",
        action="store_true",
        help=(
            "devices are delivered by the agents' device plugin: containers that use claims ask for one "
            f"{names.DEVICE_PLUGIN_RESOURCE}, and each node gets one newly placed Pod at a time"
        ),
    )


def _connection_info(cfg: k8s.Configuration) -> kopf.ConnectionInfo:
    token = None
    api_key = cfg.api_key.get("BearerToken") or cfg.api_key.get("authorization")
    if api_key:
        token = str(api_key).removeprefix("Bearer ").strip()
    return kopf.ConnectionInfo(
        server=str(cfg.host),
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        scheme="Bearer" if token else None,
        token=token,
    )


def _endpoint(args: argparse.Namespace) -> configuration.Endpoint:
    if args.webhook_service:
        target, _, port = args.webhook_service.partition(":")
        name, _, namespace = target.partition(".")
        return configuration.Endpoint(
            service_name=name,
            service_namespace=namespace or args.operator_namespace,
            service_port=int(port or 443),
        )
    host = args.webhook_host if args.webhook_host not in ("0.0.0.0", "::") else "127.0.0.1"
    return configuration.Endpoint(url=args.webhook_url or f"https://{host}:{args.webhook_port}")


def _cert_hosts(args: argparse.Namespace) -> list[str]:
    hosts = ["127.0.0.1", "localhost"]
    if args.webhook_host not in ("0.0.0.0", "::"):
        hosts.insert(0, args.webhook_host)
    if args.webhook_service:
        name, _, namespace = args.webhook_service.partition(":")[0].partition(".")
        namespace = namespace or args.operator_namespace or "default"
        hosts[:0] = [
            f"{name}.{namespace}.svc",
            f"{name}.{namespace}.svc.cluster.local",
            f"{name}.{namespace}",
        ]
    if args.webhook_url:
        from urllib.parse import urlparse

        parsed = urlparse(args.webhook_url).hostname
        if parsed:
            hosts.insert(0, parsed)
    return hosts


#: Seconds between checks that the API server answers (readiness), and the most a check may take.
PROBE_SECONDS = 2.0
PROBE_TIMEOUT = 5.0
#: How often a standby checks whether its allocator needs warming up again (see Reconciler.warm).
STANDBY_WARM_UP_SECONDS = 5.0


class EndlessBackoffs:
    """Kopf's `networking.error_backoffs` that never run out: 0.5, 1, 2, 4, then 5 s forever.

    With Kopf's finite default, a request that fails for about a minute (API server down) escalates, its watch
    task dies and the whole operator exits; an API server restart must be waited for, not crashed on. An
    iterable (not a generator) so that each request gets a fresh sequence, and not Sized, so Kopf counts none.
    """

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((0.5, 1.0, 2.0, 4.0), itertools.repeat(5.0))


async def wait_for_apiserver(kube: Kube, group_version: str, plural: str) -> bool:
    """Whether `group_version` serves `plural`, asked until the API server answers (a replica started while it
    is down waits for it, instead of exiting)."""
    delay = 0.5
    while True:
        try:
            return await kube.served(group_version, plural)
        except KubeError as exc:
            log.warning("waiting for the API server", error=str(exc), retry_in=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def run(args: argparse.Namespace) -> int:
    cfg = await load_configuration(args.kubeconfig, args.context)
    api = k8s.ApiClient(cfg)
    try:
        return await _run(args, cfg, api)
    finally:
        await api.close()


def count_write(verb: str, resource: str) -> None:
    metrics.WRITES.labels(verb, resource).inc()


def rate_limit(args: argparse.Namespace, client: str = "placement") -> TokenBucket:
    burst = args.kube_api_burst if args.kube_api_burst is not None else max(1, int(2 * args.kube_api_qps))
    return TokenBucket(args.kube_api_qps, burst, on_wait=metrics.RATE_LIMITED.labels(client).inc)


async def _run(args: argparse.Namespace, cfg: k8s.Configuration, api: k8s.ApiClient) -> int:
    identity = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    elector: ElectionThread | None = None
    warm = False
    reachable = {"now": True}  # the API server's last answer (or its absence)

    def leading() -> bool:
        return elector is None or elector.leading

    def may_write(path: str) -> bool:
        # Every write but the Lease's own is a leader's: withheld the moment leadership lapses. (A review of
        # who we are is a POST that writes nothing.)
        return leading() or "/leases" in path or path == SELF_SUBJECT_REVIEWS

    def on_reachable(answered: bool) -> None:
        reachable["now"] = answered
        metrics.REACHABLE.set(1 if answered else 0)
        metrics.READY.set(1 if warm and answered else 0)

    kube = Kube(
        api,
        on_write=count_write,
        may_write=may_write,
        on_reachable=on_reachable,
        limiter=rate_limit(args),
    )
    # Events on a client of their own, as kube-scheduler's are: their own rate limit, so that a burst of
    # placement writes neither waits behind them nor holds them back until the burst is over.
    events_kube = Kube(
        api,
        on_write=count_write,
        may_write=may_write,
        limiter=rate_limit(args, "events"),
    )
    state = State()
    recorder = Recorder(
        events_kube, host=socket.gethostname(), on_dropped=lambda t: metrics.EVENTS_DROPPED.labels(t).inc()
    )
    allocator = Allocator(nvidia_driver=args.nvidia_driver, placement=args.placement)
    taint_rules = TaintRules(kube, state, recorder, allocator, leading)
    reconciler = Reconciler(
        kube,
        state,
        recorder,
        allocator,
        is_leader=leading,
        namespaces=tuple(args.namespace),
        workers=args.workers,
        device_plugin=args.device_plugin,
    )
    feed = AdmissionFeed(state)
    stop = asyncio.Event()
    exit_code = 0
    tasks: list[asyncio.Task[Any]] = []

    metrics.serve(args.metrics_port, args.metrics_host)
    feed.builtin_dra = await wait_for_apiserver(kube, "resource.k8s.io/v1", "resourceclaims")
    operator_user = await kube.username()
    log.info("cluster inspected", builtin_dra=feed.builtin_dra, user=operator_user)

    if args.tls_cert_file:
        certs = tls.CertFiles(
            cert=Path(args.tls_cert_file),
            key=Path(args.tls_key_file or args.tls_cert_file),
            ca=Path(args.tls_ca_file or args.tls_cert_file),
        )
    else:
        certs = await asyncio.to_thread(tls.in_memory, _cert_hosts(args))

    excluded = ["kube-system"] + ([args.operator_namespace] if args.operator_namespace else [])

    def extended_names() -> list[str]:
        return sorted(feed.extended_resources())

    def desired_configuration() -> dict[str, Any]:
        # Read the CA each time: with certificate files (cert-manager) it may have been rotated.
        return configuration.build(
            _endpoint(args),
            certs.ca_bundle(),
            excluded_namespaces=excluded,
            name=args.webhook_config_name,
            extended_names=extended_names(),
            watched_namespaces=args.namespace,
        )

    desired = desired_configuration()

    async def configure_webhook() -> None:
        # Only the leader writes, the configuration included: in local mode its URL then follows the leader.
        nonlocal desired
        if args.no_webhook_config:
            metrics.CONFIGURED.set(1)
            return
        delay = 0.5
        while True:
            try:
                desired = desired_configuration()
                await admission.apply_configuration(kube, desired, operator_user)
                break
            except NotLeading:
                return  # the new leader configures it
            except KubeError as exc:
                if exc.permanent:
                    log.error("webhook configuration refused", error=str(exc))
                    raise
                # The API server is away (restarting): it is configured once it answers.
                log.warning("webhook configuration not applied yet", error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        metrics.CONFIGURED.set(1)
        log.info("webhook configured", webhook=desired["webhooks"][0]["clientConfig"].get("url", "service"))

    async def follow_ca_rotation(interval: float = 60.0) -> None:
        """Given certificate files, re-apply the configuration when the CA bundle changes (the serving
        certificate itself is re-read by the admission server at its next handshake)."""
        bundle = certs.ca_bundle()
        while True:
            await asyncio.sleep(interval)
            try:
                current = certs.ca_bundle()
            except OSError as exc:
                log.warning("CA file unreadable", error=str(exc))
                continue
            if current != bundle and leading():
                bundle = current
                log.info("CA bundle changed: updating the webhook configuration")
                try:
                    await configure_webhook()
                except Exception:  # logged there; try again at the next change or restart
                    bundle = b""

    async def follow_extended_resources(interval: float = 1.0) -> None:
        """Re-apply the configuration when the extended resource names our DeviceClasses declare change (its
        matchConditions list them); the names are read from the cache, so this costs no API call."""
        applied = extended_names()
        while True:
            await asyncio.sleep(interval)
            current = extended_names()
            if current != applied and leading() and state.bound:
                log.info("extended resources declared by DeviceClasses changed", names=current)
                try:
                    await configure_webhook()
                    applied = current
                except Exception:  # logged there; tried again at the next pass
                    continue

    async def probe_apiserver() -> None:
        """Ask the API server (and through it etcd: a LIST is a quorum read) whether it answers, so readiness
        follows it even while nothing else calls; the answer lands in on_reachable."""
        while True:
            try:
                await kube.request("GET", "/api/v1/namespaces", query=[("limit", "1")], timeout=PROBE_TIMEOUT)
            except KubeError as exc:
                if exc.unreachable or exc.status >= 500:
                    on_reachable(False)
            await asyncio.sleep(PROBE_SECONDS)

    def on_warm() -> None:
        # Every replica: caches are complete, so admission may answer; the leader also starts writing.
        nonlocal warm
        warm = True
        feed.warm()
        on_reachable(True)
        log.info("caches filled: serving admission")
        tasks.append(asyncio.create_task(reconciler.run(), name="reconciler"))
        if args.pool_status_seconds > 0:

            def rule_taints_of() -> Mapping[tuple[str, str, str], Sequence[Any]]:
                # Most clusters have no rule: then no pass over every slice (5,000: milliseconds a pass).
                rules = list(state.all(TAINT_RULES))
                return allocator.rule_taints(list(state.all(SLICES)), rules).by_device if rules else {}

            pools = PoolStatus(
                kube,
                state,
                leading,
                args.pool_status_seconds,
                rule_taints=rule_taints_of,
            )
            tasks.append(asyncio.create_task(pools.run(), name="pool-status"))
        health = DeviceHealthWatch(kube, state, recorder, leading)
        tasks.append(asyncio.create_task(health.run(), name="device-health"))
        tasks.append(asyncio.create_task(taint_rules.run(), name="device-taints"))
        if elector is not None:
            warm_ups = periodic.standby_warm_ups(STANDBY_WARM_UP_SECONDS, leading, state, reconciler.warm)
            tasks.append(asyncio.create_task(warm_ups, name="standby-warm-up"))
        if leading():
            tasks.append(asyncio.create_task(configure_webhook(), name="webhook-configuration"))
            reconciler.enqueue_everything()
        if not args.no_webhook_config:
            tasks.append(asyncio.create_task(follow_extended_resources(), name="extended-resources"))

    def on_leading() -> None:
        metrics.LEADER.set(1)
        if state.bound:
            tasks.append(asyncio.create_task(configure_webhook(), name="webhook-configuration"))
            reconciler.enqueue_everything()

    def on_lost() -> None:
        # Stand down, do not exit: writes are already withheld (may_write), queued items are skipped, and the
        # elector campaigns again. Exiting would turn every API server restart longer than the renew deadline
        # into a crash loop.
        metrics.LEADER.set(0)

    if args.leader_election:
        main_loop = asyncio.get_running_loop()

        def make_elector() -> tuple[LeaseElector, Callable[[], Awaitable[None]]]:
            # On the election thread's loop: a client of its own (an aiohttp session belongs to one loop).
            lease_api = k8s.ApiClient(cfg)
            lease_kube = Kube(lease_api, on_write=count_write)
            elector = LeaseElector(
                lease_kube,
                args.lease_namespace or args.operator_namespace or "default",
                args.lease_name,
                identity,
                lease_seconds=args.lease_seconds,
                on_started=lambda: main_loop.call_soon_threadsafe(on_leading),
                on_stopped=lambda: main_loop.call_soon_threadsafe(on_lost),
            )
            return elector, lease_api.close

        elector = ElectionThread(make_elector)
    else:
        metrics.LEADER.set(1)

    # Kopf's start-up wait for its indexes is quadratic in the objects watched (see kopfpatch).
    kopfpatch.install()
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return _connection_info(cfg)

    informers = handlers.register(
        registry,
        state,
        reconciler,
        on_warm,
        on_taints=taint_rules.changed,
        on_classes=feed.classes_changed,
        on_name=feed.seen,
        kube=kube,
        namespaces=args.namespace,
    )

    settings = kopf.OperatorSettings()
    # Admission is served by a process of its own (see dra_operator.operator.webhookprocess), not by Kopf's
    # server, which would answer on this loop behind the reconciler's work, nor by a thread of this process,
    # which would wait for the interpreter lock behind it.
    admission_process = AdmissionProcess(
        ChildOptions(
            host=args.webhook_host,
            port=args.webhook_port,
            cert=certs.cert,
            key=certs.key,
            builtin_dra=feed.builtin_dra,
            delivery_resource=names.DEVICE_PLUGIN_RESOURCE if args.device_plugin else None,
            kubeconfig=args.kubeconfig,
            context=args.context,
            log_level=args.log_level,
            pass_fds=tls.inherited_fds(certs),
        ),
        snapshot=feed.snapshot,
        on_review=lambda path, seconds: metrics.ADMISSION_SECONDS.labels(path).observe(seconds),
    )
    await admission_process.start()
    feed.send = admission_process.send
    settings.posting.enabled = False
    settings.persistence.diffbase_storage = NoDiffBase()  # no handler reads it (see kopfstorage)
    settings.posting.level = 100  # Kopf's own event posting: never (warn() ignores `enabled`)
    settings.queueing.idle_timeout = 1.0
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60

    settings.networking.error_backoffs = EndlessBackoffs()

    @kopf.on.probe(id="apiserver", registry=registry)
    def apiserver_probe(**_: Any) -> bool:
        # Shown in Kopf's /healthz answer; liveness shares that endpoint, so it reports and never fails.
        return reachable["now"]

    def informer_ended(task: asyncio.Task[Any]) -> None:
        # An informer retries every API failure itself; one that ended otherwise leaves its cache stale, so
        # the operator stops (and its Pod restarts) rather than decide on it.
        nonlocal exit_code
        if not task.cancelled():
            exit_code = 1
            log.error("informer ended", informer=task.get_name(), error=repr(task.exception()))
            stop.set()

    for informer in informers:
        watching = asyncio.create_task(informer.run(), name=f"informer-{informer.name}")
        watching.add_done_callback(informer_ended)
        tasks.append(watching)
    recorder.start()
    tasks.append(asyncio.create_task(probe_apiserver(), name="apiserver-probe"))
    if elector is not None:
        elector.start()
    if args.tls_cert_file:
        tasks.append(asyncio.create_task(follow_ca_rotation(), name="ca-rotation"))
    log.info(
        "starting",
        identity=identity,
        namespaces=args.namespace or "all",
        leader_election=args.leader_election,
    )
    try:
        await kopf.operator(
            registry=registry,
            settings=settings,
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=list(args.namespace),
            liveness_endpoint=args.liveness,
            stop_flag=stop,
        )
    finally:
        await admission_process.stop()
        if elector is not None:
            await elector.stop()
        for task in tasks:
            task.cancel()
        await recorder.stop()
        writes = kube.writes + events_kube.writes
        log.info("stopped", writes={f"{v} {r}": n for (v, r), n in sorted(writes.items())})
    return exit_code


def main(args: argparse.Namespace) -> int:
    if args.kube_api_qps > 0 and args.kube_api_burst is not None and args.kube_api_burst < 1:
        print(f"dra-operator run: --kube-api-burst {args.kube_api_burst}: at least 1", file=sys.stderr)
        return 2
    logs.setup(args.log_level)
    size_read_buffers()
    if args.leader_election:
        try:
            leader.timings(args.lease_seconds)
        except leader.LeaseTooShort as exc:
            print(f"dra-operator run: --lease-seconds {args.lease_seconds}: {exc}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130

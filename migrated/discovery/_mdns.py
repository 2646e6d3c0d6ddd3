"""Advertise this daemon and browse for the others over mDNS (python-zeroconf, on the event loop).

TTLs: every record we send (PTR, SRV, TXT, A) lives ``RECORD_TTL`` = 60 s. python-zeroconf raises a received
PTR's TTL to at least 1125 s and its browser reports a service gone only when the PTR goes, so a daemon killed
without a goodbye would linger for 19 minutes. Instead, every ``SWEEP_INTERVAL`` (5 s) we look at each peer's SRV
record in the cache: with less than a third of its TTL left we ask for it again (RFC 6762 §5.2; a live peer
answers, by multicast, which refreshes every browser's cache at once), and once it has expired the peer is
dropped. So a daemon that vanished without a goodbye leaves ``seen()`` at most 65 s after its last answer, i.e.
about 20 to 65 s after it died; a goodbye removes it at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import ifaddr
from zeroconf import (  # type: ignore[attr-defined]  # the DNS classes are kept there, not in __all__
    DNSOutgoing,
    DNSQuestion,
    DNSQuestionType,
    DNSService,
    InterfaceChoice,
    IPVersion,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from migrated.discovery._advert import SERVICE_TYPE, Advert, BadAdvert, decode_advert, encode_txt, instance_name
from migrated.errors import ConfigError

__all__ = ["RECORD_TTL", "SWEEP_INTERVAL", "Mdns"]

log = logging.getLogger("migrated.discovery")

RECORD_TTL = 60  # seconds, for the records we send
SWEEP_INTERVAL = 5.0  # seconds between looks at the peers' records in the cache
REFRESH_REMAINING = 1 / 3  # ask for a peer's records again once less than this part of their TTL remains
RESOLVE_TIMEOUT_MS = 3000  # for a peer whose announcement did not carry all its records
MAX_PEERS = 1024  # adverts kept; a flood of valid-looking fakes stops here

# Multicast answers only. zeroconf asks its first questions with the unicast-response bit (RFC 6762 §5.4), but
# where several mDNS stacks share port 5353 (avahi-daemon beside us, two daemons on one host) the kernel hands a
# unicast answer to one socket of them, often not ours (§15.1), and the peers show up a second later, at the next
# question. Measured on loopback with the peer in another process: 1.1 s with QU, 0.1-0.2 s with QM.
_ASK = DNSQuestionType.QM

# DNS wire values (RFC 1035 §3.2, RFC 2782)
_QUERY = 0x0000
_CLASS_IN = 1
_TYPE_TXT = 16
_TYPE_SRV = 33

OnChange = Callable[[dict[str, Advert]], None]


class Mdns:
    """Advertise one daemon and keep the adverts of the others it can see, keyed by device id."""

    def __init__(self, on_change: OnChange, interfaces: list[str] | None = None, cooperating: bool = True) -> None:
        for interface in interfaces or ():
            try:
                ipaddress.IPv4Address(interface)
            except ValueError:
                raise ConfigError(f"mDNS interface {interface!r} is not an IPv4 address of this host") from None
        self._on_change = on_change
        self._interfaces = list(interfaces) if interfaces else None
        self._cooperating = cooperating
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._own: Advert | None = None
        self._info: ServiceInfo | None = None
        self._adverts: dict[str, Advert] = {}  # by instance name (lowercase), most recently changed last
        self._seen: dict[str, Advert] = {}
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()

    async def start(self, own: Advert) -> None:
        """Register our own service and start browsing for the others."""
        if self._zc is not None:
            raise RuntimeError("this Mdns has already started")
        info = self._service_info(own)
        choice = self._interfaces if self._interfaces else InterfaceChoice.All
        try:
            self._zc = AsyncZeroconf(interfaces=choice, ip_version=IPVersion.V4Only)
        except (OSError, RuntimeError) as exc:
            where = ", ".join(self._interfaces) if self._interfaces else "any interface"
            raise ConfigError(
                f"cannot start mDNS on {where} ({exc}); check mdns_interfaces in the config, or start with --no-mdns"
            ) from exc
        self._own = own
        try:
            # Browse first: without cooperating responders, registering waits out about a second of probes.
            self._browser = AsyncServiceBrowser(
                self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_state_change], question_type=_ASK
            )
            self._spawn(self._sweep())
            await self._register(info)
        except BaseException:
            await self.close()
            raise

    async def update(self, own: Advert) -> None:
        """Announce a changed advert (e.g. a new port)."""
        if self._zc is None or self._info is None or self._own is None:
            raise RuntimeError("start this Mdns before updating it")
        info = self._service_info(own)
        old, previous, self._own = self._info, self._own, own
        if instance_name(own) == instance_name(previous) and own.device_id == previous.device_id:
            info.name = old.name  # keep a name zeroconf changed while probing
            self._info = info
            self._spawn(await self._zc.async_update_service(info))
        else:  # a new instance name: announce it before the old one says goodbye, so peers never lose us
            await self._register(info)
            self._spawn(await self._zc.async_unregister_service(old))

    async def close(self) -> None:
        """Say goodbye (unregister our service) and stop browsing."""
        zc, self._zc = self._zc, None
        if zc is None:
            return
        if self._browser is not None:
            await self._browser.async_cancel()
        pending: list[asyncio.Future[Any]] = [*self._tasks, *self._resolving.values()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await zc.async_close()  # sends the goodbyes of every registered service first
        self._adverts.clear()
        self._seen = {}

    def seen(self) -> dict[str, Advert]:
        """Device id -> latest advert of every other daemon currently visible."""
        return dict(self._seen)

    # -- advertising

    def _service_info(self, own: Advert) -> ServiceInfo:
        try:
            text = encode_txt(own)
        except BadAdvert as exc:
            raise ConfigError(f"this host cannot be announced over mDNS: {exc}; choose another --name") from None
        addresses = list(own.addresses) or self._host_addresses()
        return ServiceInfo(
            SERVICE_TYPE,
            instance_name(own),
            port=own.port,
            properties=text,
            server=f"mig-{own.device_id[:16]}.local.",
            host_ttl=RECORD_TTL,
            other_ttl=RECORD_TTL,
            parsed_addresses=addresses,
        )

    def _host_addresses(self) -> list[str]:
        """The IPv4 addresses of the interfaces we announce on; loopback only when there is nothing else."""
        if self._interfaces:
            return list(self._interfaces)
        found = {ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips if isinstance(ip.ip, str)}
        outside = sorted(address for address in found if not ipaddress.IPv4Address(address).is_loopback)
        return outside or sorted(found)

    async def _register(self, info: ServiceInfo) -> None:
        assert self._zc is not None
        self._info = info
        self._spawn(
            await self._zc.async_register_service(
                info, allow_name_change=True, cooperating_responders=self._cooperating
            )
        )

    def _spawn(self, work: Awaitable[object]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- browsing

    def _on_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """Called by the browser on the event loop; never raises into zeroconf."""
        if self._zc is None:
            return  # closing
        try:
            if state_change is ServiceStateChange.Removed:
                self._forget(name)
            else:
                self._look_up(name)
        except Exception:
            log.exception("mDNS: handling %s of %s failed", state_change.name, name)

    def _look_up(self, name: str) -> None:
        """Take the advert of ``name`` from the cache, or ask the network for what the cache lacks."""
        assert self._zc is not None
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if info.load_from_cache(self._zc.zeroconf):
            self._keep(name, self._decode(info))
        elif name.lower() not in self._resolving:
            task = asyncio.ensure_future(self._resolve(name, info))
            self._resolving[name.lower()] = task
            task.add_done_callback(self._resolved)

    async def _resolve(self, name: str, info: AsyncServiceInfo) -> None:
        assert self._zc is not None
        try:
            found = await info.async_request(self._zc.zeroconf, RESOLVE_TIMEOUT_MS, _ASK)
        except Exception:
            log.exception("mDNS: asking for %s failed", name)
            return
        if found:
            self._keep(name, self._decode(info))
        else:
            log.debug("mDNS: %s did not answer with its SRV, TXT and A records", name)

    def _resolved(self, task: asyncio.Task[None]) -> None:
        for key, running in list(self._resolving.items()):
            if running is task:
                del self._resolving[key]

    def _decode(self, info: ServiceInfo) -> Advert | None:
        try:
            return decode_advert(info.text, info.port, info.parsed_addresses(IPVersion.V4Only))
        except BadAdvert as exc:
            log.debug("mDNS: ignoring %s: %s", info.name, exc)
            return None

    def _keep(self, name: str, advert: Advert | None) -> None:
        """Record the advert of ``name`` (None: it has none worth keeping) and report a change."""
        key = name.lower()
        if advert is None:
            self._forget(name)
            return
        if self._own is not None and advert.device_id == self._own.device_id:
            return  # ourselves, or someone claiming to be
        if self._adverts.get(key) == advert:
            return
        if key not in self._adverts and len(self._adverts) >= MAX_PEERS:
            log.debug("mDNS: ignoring %s: already %d peers", name, MAX_PEERS)
            return
        self._adverts.pop(key, None)
        self._adverts[key] = advert
        self._publish()

    def _forget(self, name: str) -> None:
        key = name.lower()
        task = self._resolving.pop(key, None)
        if task is not None:
            task.cancel()
        if self._adverts.pop(key, None) is not None:
            self._publish()

    def _publish(self) -> None:
        seen = {advert.device_id: advert for advert in self._adverts.values()}  # the latest wins a shared id
        if seen == self._seen:
            return
        self._seen = seen
        try:
            self._on_change(dict(seen))
        except Exception:
            log.exception("mDNS: the peer change callback failed")

    async def _sweep(self) -> None:
        """Now and then: refresh the records of peers about to expire, drop those whose records expired."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                self._sweep_once()
            except Exception:
                log.exception("mDNS: sweeping the peers failed")

    def _sweep_once(self) -> None:
        assert self._zc is not None
        zc = self._zc.zeroconf
        now = current_time_millis()
        ask = DNSOutgoing(_QUERY)
        for key in list(self._adverts):
            srv = self._live_srv(zc, key, now)
            if srv is None:
                log.debug("mDNS: %s expired", key)
                self._forget(key)
                continue
            if srv.get_remaining_ttl(now) < srv.ttl * REFRESH_REMAINING:
                ask.add_question(DNSQuestion(srv.name, _TYPE_SRV, _CLASS_IN))  # its A records come as additionals
                ask.add_question(DNSQuestion(srv.name, _TYPE_TXT, _CLASS_IN))
            self._look_up(srv.name)  # the cache may have moved on (an address superseded a second ago)
        if ask.questions:
            zc.async_send(ask)

    @staticmethod
    def _live_srv(zc: Zeroconf, key: str, now: float) -> DNSService | None:
        records = [
            record
            for record in zc.cache.get_all_by_details(key, _TYPE_SRV, _CLASS_IN)
            if isinstance(record, DNSService) and not record.is_expired(now)
        ]
        return max(records, key=lambda record: record.get_remaining_ttl(now), default=None)

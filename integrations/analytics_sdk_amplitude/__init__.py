"""Amplitude destination: each message through Amplitude's own Python SDK, every result known.

Install with `pip install 'analytics-sdk[amplitude]'`. Options follow RudderStack's Amplitude
destination (`apiKey`, `residencyServer`, `trackAllPages`, `trackProductsOnce`,
`groupTypeTrait`...). The SDK batches and retries in its own threads; a batch handler returns
only once the SDK has reported every event of the batch (its `Config(callback=...)`), so
nothing stays buffered in the SDK and each message ends handled or rejected with the reason
Amplitude gave. The mapping is in `_mapping.py`, the SDK hooks in `_delivery.py`.

The SDK registers each client's `shutdown()` to run at exit, before atexit hooks: it would
close the SDK before analytics_sdk's exit flush delivers what is still queued. The wrapper
removes that hook; the exit flush ends with the wrapper's `shutdown()`.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

import amplitude
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from analytics_sdk.integration import (
    Integration,
    IntegrationOptions,
    Rejected,
    RejectedMessage,
    blank_is_unset,
    http_url,
)
from analytics_sdk.models import Message
from analytics_sdk_amplitude._delivery import Outcomes, OutcomeStorage, OutcomeStorageProvider
from analytics_sdk_amplitude._mapping import DEFAULT_GROUP_TYPE, PRODUCT_EVENT, EventMapper, Send

__all__ = [
    "DEFAULT_GROUP_TYPE",
    "PRODUCT_EVENT",
    "AmplitudeIntegration",
    "AmplitudeOptions",
    "TraitRef",
]

_FLUSH_QUEUE_SIZE = 200  # events per request (the SDK's default; Amplitude takes up to 2000)
_RETRY_TICK_MS = 500  # the SDK's consumer wakes this often to send the retries that are due


class TraitRef(BaseModel):
    """One entry of `traitsToIncrement` and the like: `{"traits": "logins"}`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    traits: str = ""


class AmplitudeOptions(IntegrationOptions):
    api_key: SecretStr = Field(min_length=1)  # apiKey
    residency_server: Literal["standard", "EU"] = "standard"  # residencyServer
    server_url: str | None = None  # the full endpoint URL; overrides residency and use_batch
    use_batch: bool = False  # Amplitude's /batch endpoint (higher limits) instead of /2/httpapi
    track_all_pages: bool = False  # "Loaded a Page" for every page call
    track_named_pages: bool = True  # "Viewed {name} Page"
    track_categorized_pages: bool = True  # "Viewed {category} Page"
    track_products_once: bool = False  # keep `products` on the order, no event per product
    track_revenue_per_product: bool = False  # revenue on each product, not on the order
    group_type_trait: str | None = None  # the group trait holding the Amplitude group type
    group_value_trait: str | None = None  # ... and the one holding the group name
    traits_to_increment: tuple[TraitRef, ...] = ()  # $add instead of $set
    traits_to_set_once: tuple[TraitRef, ...] = ()  # $setOnce
    traits_to_append: tuple[TraitRef, ...] = ()  # $append
    traits_to_prepend: tuple[TraitRef, ...] = ()  # $prepend
    version_name: str | None = None  # app_version when the context has no app.version
    max_retries: int = Field(default=3, ge=0, le=10)  # retries per event after the first try
    timeout: float = Field(default=30.0, gt=0, le=300)  # seconds a batch may take, retries in

    @field_validator("group_type_trait", "group_value_trait", "version_name", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return blank_is_unset(value)

    @field_validator("server_url", mode="before")
    @classmethod
    def _http_url(cls, value: Any) -> Any:
        value = blank_is_unset(value)
        return http_url(value) if isinstance(value, str) else value

    @field_validator(
        "traits_to_increment",
        "traits_to_set_once",
        "traits_to_append",
        "traits_to_prepend",
        mode="before",
    )
    @classmethod
    def _trait_refs(cls, value: Any) -> Any:
        # Plain names are accepted too: ["logins"] as well as [{"traits": "logins"}].
        if isinstance(value, list):
            return [{"traits": item} if isinstance(item, str) else item for item in value]
        return value


class AmplitudeIntegration(Integration[AmplitudeOptions]):
    """Every call type but alias (rejected: Amplitude's SDK has no alias)."""

    key = "amplitude"
    display_name = "Amplitude"
    destination_names = frozenset({"AM"})
    options_model = AmplitudeOptions
    batch_size = 100

    def setup(self) -> None:
        api_key = self.options.api_key.get_secret_value()
        attempts = self.options.max_retries + 1
        self._outcomes = Outcomes(api_key, attempts)
        self._mapper = EventMapper(self.options)
        self._storage = OutcomeStorageProvider(self._outcomes)
        config = amplitude.Config(
            flush_queue_size=_FLUSH_QUEUE_SIZE,
            flush_interval_millis=_RETRY_TICK_MS,
            flush_max_retries=attempts,  # the SDK counts the first try as one
            min_id_length=1,  # ids like "u1" are valid for us; Amplitude's default wants 5
            callback=self._outcomes.settle,
            server_zone="EU" if self.options.residency_server == "EU" else "US",
            use_batch=self.options.use_batch,
            server_url=self.options.server_url,
            storage_provider=self._storage,
        )
        if hasattr(amplitude, "EventLogLevel"):  # 1.3+: one INFO line per event is too many
            config.event_log_level = amplitude.EventLogLevel.DEBUG
        self._client: Any = amplitude.Amplitude(api_key, config)
        _forget_exit_hook(self._client)
        self._closed = False

    def handle(self, message: Message) -> None:
        for rejected in self.handle_batch([message]):
            raise RejectedMessage(rejected.reason)

    def handle_batch(self, messages: Sequence[Message]) -> list[Rejected]:
        deadline = time.monotonic() + self.options.timeout
        rejected: list[Rejected] = []
        plans: list[tuple[str, list[Send]]] = []
        for message in messages:
            try:
                plans.append((message.message_id, self._mapper.plan(message)))
            except RejectedMessage as exc:
                rejected.append(Rejected(message.message_id, exc.reason))
        insert_ids = [send.insert_id for _, sends in plans for send in sends]
        if not insert_ids:
            return rejected
        self._outcomes.expect(insert_ids)
        try:
            for _, sends in plans:
                for send in sends:
                    send(self._client)
            self._outcomes.refuse_unqueued(insert_ids)
            self._client.flush()  # sends now; the callbacks tell how each event fared
            self._outcomes.wait(insert_ids, deadline, self._nudge)
        finally:
            # Whatever happened, nothing of this batch stays pending or buffered in the SDK.
            failures = self._outcomes.finish(
                insert_ids,
                f"Amplitude confirmed nothing within {self.options.timeout:g} s "
                "(the event may still arrive)",
            )
            self._drop_buffered()
        for message_id, sends in plans:
            failed = [failures[s.insert_id] for s in sends if s.insert_id in failures]
            if failed:
                reason = failed[0]
                if len(sends) > 1:
                    reason = f"{len(failed)} of its {len(sends)} Amplitude events failed: {reason}"
                rejected.append(Rejected(message_id, reason))
        return rejected

    def flush(self, timeout: float) -> bool:
        return True  # handle_batch returns only once the SDK has sent (or given up on) all

    def shutdown(self, timeout: float) -> None:
        client = getattr(self, "_client", None)
        if client is None or self._closed:
            return
        self._closed = True
        self._drop_buffered()
        # The SDK's shutdown joins its thread pool, which may be waiting out a request.
        stopper = threading.Thread(
            target=client.shutdown, name="analytics_sdk.amplitude.shutdown", daemon=True
        )
        stopper.start()
        stopper.join(timeout)
        if stopper.is_alive():
            self.logger.warning(
                "the Amplitude SDK did not stop within %.1f s; it ends in the background",
                timeout,
            )
        _forget_exit_hook(client)  # setup() did already: no path leaves the client held

    def _nudge(self) -> None:
        storage = self._storage.storage
        if storage is not None:
            storage.nudge()

    def _drop_buffered(self) -> None:
        storage: OutcomeStorage | None = self._storage.storage
        if storage is not None:
            storage.pull_all()  # only abandoned events can be there: reported already


def _forget_exit_hook(client: Any) -> None:
    """Remove the exit hook `amplitude.Amplitude()` registers for `client` (and so keeps it).

    The SDK registers `client.shutdown` with `threading._register_atexit`, which runs before
    atexit hooks, or with `atexit` where that does not exist.
    """
    hook = client.shutdown
    hooks = getattr(threading, "_threading_atexits", None)
    if isinstance(hooks, list):
        for registered in [h for h in hooks if getattr(h, "func", None) == hook]:
            with contextlib.suppress(ValueError):  # removed by another thread meanwhile
                hooks.remove(registered)
    atexit.unregister(hook)

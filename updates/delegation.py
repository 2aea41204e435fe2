"""Bank SSD stages delegated to the bank's own key service (issue 17, docs/keyservice.md).

A security domain installed for SCP11 (``SecurityDomain.scp == 0x11``) of a bank with an active
key service is reached only through that service: it opens the channel (SCP11b at enrollment,
then SCP03 with the bank's keys), wraps the scripts the engine computes and unwraps the card's
answers. The platform keeps the service's sealed state between exchanges and never sees a bank
key or session key. Calls are batched: at most one to unwrap the answers of an exchange and one
to open or wrap its next batch, never one per APDU.

What a failure of the service means for the job (the engine acts on these exceptions):

* unreachable (down, timeout, TLS) → :class:`ServiceHeld`: the job waits for the card's next
  presentation, the attempt is not counted, and its ``last_error`` says why;
* a refusal under the bank's policy → :class:`~updates.engine.protocol.JobFailed`, audited here
  (``key_service.refused``) as the service journals it on its side;
* a card answer the service cannot verify (cryptogram, receipt, R-MAC) or a state it no longer
  opens → :class:`~updates.engine.protocol.SessionRejected`;
* a request the service calls malformed → :class:`~gp.errors.LocalProtocolError` (our bug).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from audit.services import record_event
from gp.errors import LocalProtocolError
from gp.scp import SecuredResponse
from issuers import bank_service_client as bsc
from issuers.key_services import client_of
from issuers.models import BankKeyService
from updates.engine.protocol import Command, JobFailed, SessionRejected, StepFailed

SCP11_SD_KID = 0x13  # SK.SD.ECKA of SCP11b (Amd F §6.1)
SCP11_SD_KVN = 0x01  # the key version the card gives the SSD's generated key pair (cardsim.scp11)


class ServiceHeld(StepFailed):
    """The bank's key service cannot be reached: the job waits, no attempt is charged."""


@contextmanager
def calling(service: BankKeyService, *, card_cin: str, sd_aid: str) -> Iterator[None]:
    """Translate what the bank's service says into what the engine does (see the module doc)."""
    bank = service.organization

    def audit_refusal(exc: bsc.BankServiceError) -> None:
        record_event(
            action="key_service.refused",
            subject_type="security_domain",
            subject_id=sd_aid,
            card_cin=card_cin,
            organization=bank,
            outcome="denied",
            reason=exc.message,
            actor_type="system",
            details={"code": exc.code},
        )

    try:
        yield
    except bsc.BankServiceUnavailable as exc:
        raise ServiceHeld(f"{bank.name}'s key service is unavailable ({exc.message}); the job waits for it") from None
    except bsc.BankServiceRefused as exc:
        audit_refusal(exc)
        raise JobFailed(f"{bank.name}'s key service refused: {exc.message}") from None
    except bsc.BankServiceChannelError as exc:
        raise SessionRejected(f"{bank.name}'s key service ended the channel ({exc.whose}): {exc.message}") from None
    except bsc.BankServiceRequestError as exc:
        if exc.code == "sealed":  # the bank's own sealed data does not open for this card: its fault, not ours
            audit_refusal(exc)
            raise JobFailed(
                f"{bank.name}'s key service could not open the personalisation data: {exc.message}"
            ) from None
        raise LocalProtocolError(f"{bank.name}'s key service called the request malformed: {exc.message}") from None


@dataclass
class RemoteChannel:
    """A secure channel whose keys are at the bank's key service: the platform holds only the
    service's sealed state (``state``) and asks it to wrap and unwrap, one call per batch."""

    service: BankKeyService
    session: str
    card_cin: str
    sd_aid: str
    state: str | None
    data_limit: int
    is_authenticated: bool = True

    def _client(self) -> bsc.BankServiceClient:
        return client_of(self.service)

    def max_data_length(self, extended: bool = False) -> int:
        return self.data_limit

    @property
    def sealed(self) -> bytes:
        if self.state is None:
            raise SessionRejected("the bank's key service closed the channel")
        return self.state.encode("ascii")

    @classmethod
    def restore(
        cls, service: BankKeyService, session: str, card_cin: str, sd_aid: str, sealed: bytes, data_limit: int
    ) -> RemoteChannel:
        return cls(service, session, card_cin, sd_aid, sealed.decode("ascii"), data_limit)

    @classmethod
    def open_scp03(
        cls,
        service: BankKeyService,
        *,
        session: str,
        card_cin: str,
        sd_aid: str,
        kvn: int,
        i: int,
        host_challenge: bytes,
        initialize_update_response: bytes,
    ) -> tuple[RemoteChannel, bytes]:
        """The bank's service checks the card cryptogram; EXTERNAL AUTHENTICATE comes back."""
        with calling(service, card_cin=card_cin, sd_aid=sd_aid):
            opened = client_of(service).open_scp03(
                session=session,
                card=bytes.fromhex(card_cin),
                sd_aid=bytes.fromhex(sd_aid),
                kvn=kvn,
                i=i,
                host_challenge=host_challenge,
                initialize_update_response=initialize_update_response,
            )
        return cls(service, session, card_cin, sd_aid, opened.state, opened.max_data_length), opened.commands[0]

    @classmethod
    def open_scp11b(
        cls, service: BankKeyService, *, session: str, card_cin: str, sd_aid: str, certificates: bytes
    ) -> tuple[RemoteChannel, bytes]:
        """The bank's service checks the SD's certificate chain (card CA → card → SD); INTERNAL
        AUTHENTICATE with its ephemeral key comes back (the receipt is checked on the answer)."""
        with calling(service, card_cin=card_cin, sd_aid=sd_aid):
            opened = client_of(service).open_scp11b(
                session=session,
                card=bytes.fromhex(card_cin),
                sd_aid=bytes.fromhex(sd_aid),
                kid=SCP11_SD_KID,
                kvn=SCP11_SD_KVN,
                certificates=certificates,
            )
        channel = cls(service, session, card_cin, sd_aid, opened.state, opened.max_data_length)
        channel.is_authenticated = False
        return channel, opened.commands[0]

    def _exchange(self, responses: list[bytes], commands: list[dict[str, Any]]) -> Any:
        if self.state is None:
            raise SessionRejected("the bank's key service closed the channel")
        with calling(self.service, card_cin=self.card_cin, sd_aid=self.sd_aid):
            answer = self._client().exchange(
                session=self.session, state=self.state, responses=responses, commands=commands
            )
        self.state = answer.state
        return answer

    def unwrap_all(self, responses: list[bytes]) -> list[SecuredResponse | str]:
        """The card's answers, unwrapped and checked by the service, in order; an answer that
        failed its integrity check is the service's message (a string) and ends the list."""
        if not responses:
            return []
        answer = self._exchange(responses, [])
        out: list[SecuredResponse | str] = []
        for item in answer.responses:
            if isinstance(item, bsc.Unwrapped):
                out.append(SecuredResponse(item.data, item.sw, item.authenticated))
            else:
                out.append(f"response integrity check failed: {item.message}")
                break
        if any(isinstance(item, SecuredResponse) and item.authenticated for item in out):
            self.is_authenticated = True
        return out

    def wrap_all(self, commands: list[Command]) -> list[bytes]:
        if not commands:
            return []
        items = [cmd.service if cmd.service is not None else {"apdu": cmd.apdu.hex().upper()} for cmd in commands]
        answer = self._exchange([], items)
        if len(answer.commands) != len(commands):
            raise LocalProtocolError("the bank's key service wrapped a different number of commands")
        return list(answer.commands)

"""How every Kafka client of streamlearn connects: security protocol, TLS, SASL.

One ``KafkaAuth``, made from the settings, gives the same connection to all of
them: the Faust worker (``faust_credentials``), and every plain aiokafka
client, the control client, ``replay``, ``watch``, ``bench``, ``topics``,
``plot`` (``client_options``).

``check`` connects to the bootstrap servers before anything else, so that a
wrong password or a certificate we do not trust stops a worker or a command
at once with one clear line (``KafkaAuthError``), and a broker that cannot be
reached stops it after a bounded wait (``KafkaUnreachable``), instead of the
clients' own retry loops, which log the same failure forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import faust
from aiokafka.conn import create_conn
from aiokafka.errors import IllegalSaslStateError, KafkaError, SaslAuthenticationFailed, UnsupportedSaslMechanismError
from aiokafka.helpers import create_ssl_context

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaAuthError(Exception):
    """Kafka refused us (credentials, certificates) or the security settings cannot work: do not retry."""


class KafkaUnreachable(Exception):
    """No bootstrap server accepted a connection in the time given."""


log = logging.getLogger("streamlearn.connection")


@dataclass(frozen=True)
class KafkaAuth:
    protocol: str = "PLAINTEXT"
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""
    key_password: str = ""
    check_hostname: bool = True
    mechanism: str = "PLAIN"
    username: str = ""
    password: str = ""

    def __repr__(self) -> str:   # never the password
        return (f"KafkaAuth(protocol={self.protocol!r}, mechanism={self.mechanism!r}, "
                f"username={self.username!r}, cafile={self.cafile!r}, certfile={self.certfile!r})")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def problems(self) -> list[str]:
        """What makes these settings unusable, in words (empty when they can work)."""
        out = []
        if self.protocol not in PROTOCOLS:
            out.append(f"kafka_security_protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}")
            return out
        if self.sasl:
            if self.mechanism not in MECHANISMS:
                out.append(f"kafka_sasl_mechanism must be one of {', '.join(MECHANISMS)}, not {self.mechanism!r}")
            if not self.username or not self.password:
                out.append(f"{self.protocol} needs kafka_sasl_username and kafka_sasl_password")
        if bool(self.certfile) != bool(self.keyfile):
            out.append("a client certificate needs both kafka_ssl_certfile and kafka_ssl_keyfile")
        if self.tls:
            for name in ("cafile", "certfile", "keyfile"):
                path = getattr(self, name)
                if path and not Path(path).is_file():
                    out.append(f"kafka_ssl_{name} {path!r} is not a readable file")
        return out

    @cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        try:
            context = create_ssl_context(cafile=self.cafile or None, certfile=self.certfile or None,
                                         keyfile=self.keyfile or None, password=self.key_password or None)
        except (OSError, ssl.SSLError) as exc:
            raise KafkaAuthError(f"cannot use the TLS files: {exc}") from None
        context.check_hostname = self.check_hostname
        return context

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            options["ssl_context"] = self.ssl_context
        if self.sasl:
            options.update(sasl_mechanism=self.mechanism, sasl_plain_username=self.username,
                           sasl_plain_password=self.password)
        return options

    def faust_credentials(self) -> faust.types.auth.CredentialsT | None:
        """Faust's ``broker_credentials`` for the same connection (None: plaintext)."""
        if self.sasl:
            return faust.SASLCredentials(username=self.username, password=self.password, mechanism=self.mechanism,
                                         ssl_context=self.ssl_context)
        if self.tls:
            return faust.SSLCredentials(self.ssl_context)
        return None

    async def check(self, bootstrap_servers: str, timeout: float = 30.0, retry_every: float = 1.0,
                    say: Callable[[str], None] = log.warning, say_every: float = 5.0) -> None:
        """Connect: return once a bootstrap server accepts us.

        Raises ``KafkaAuthError`` at once if Kafka refuses our credentials or
        we refuse its certificate (no retry can change that), and
        ``KafkaUnreachable`` if no server accepted a connection within
        ``timeout`` seconds. While waiting, ``say`` hears why, at most once
        every ``say_every`` seconds.
        """
        started = time.monotonic()
        deadline, said = started + timeout, started
        servers = [server.strip() for server in bootstrap_servers.split(",") if server.strip()]
        while True:
            why = ""
            for server in servers:
                left = deadline - time.monotonic()
                why = await self._connect(server, max(0.1, min(left, 10.0)))
                if not why:
                    return
            now = time.monotonic()
            if now >= deadline:
                raise KafkaUnreachable(f"cannot connect to Kafka at {bootstrap_servers}: {why} "
                                       f"(waited {now - started:.0f} s, kafka_connect_timeout_seconds)")
            if now - said >= say_every:
                say(f"waiting for Kafka at {bootstrap_servers}: {why}")
                said = now
            await asyncio.sleep(min(retry_every, deadline - now))

    async def _connect(self, server: str, timeout: float) -> str:
        """Connect to one server and close again: empty when it accepted us, else why not in words."""
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(create_conn(host.strip("[]"), int(port), **self.client_options()),
                                          timeout)
        except (SaslAuthenticationFailed, UnsupportedSaslMechanismError) as exc:
            raise KafkaAuthError(f"Kafka at {server} refused the credentials of user {self.username!r} "
                                 f"({self.mechanism}): {exc}") from None
        except ssl.SSLCertVerificationError as exc:
            raise KafkaAuthError(f"the TLS certificate of Kafka at {server} is not trusted "
                                 f"(kafka_ssl_cafile {self.cafile or 'system CAs'!r}): "
                                 f"{exc.verify_message}") from None
        except ssl.SSLError as exc:
            raise KafkaAuthError(f"TLS with Kafka at {server} failed: {exc} "
                                 f"(is {self.protocol} the listener's protocol?)") from None
        except IllegalSaslStateError:
            raise KafkaAuthError(f"Kafka at {server} does not speak SASL there "
                                 f"(is {self.protocol} the listener's protocol?)") from None
        except asyncio.TimeoutError:
            return f"no answer within {timeout:.0f} s"
        except (OSError, KafkaError) as exc:   # a protocol mismatch can look like a closed connection too
            return _reason(exc)
        except ValueError as exc:
            return f"not a host:port ({exc})"
        conn.close()
        return ""


def _reason(exc: BaseException) -> str:
    """An exception in a few words: the OS's own (``Connection refused``) when it has one."""
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__

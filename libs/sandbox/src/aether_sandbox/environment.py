"""Which of a service's environment variables a sandboxed command may see.

A command (an agent's, or a mission's verification running what agents merged) is hostile
code: its environment is built from scratch, a few harmless variables plus the ones an
operator names, and never a name that may hold a credential or the address of one of the
service's own backends, however the operator spelled it. A list of what to drop would
miss the next setting that holds a secret (a push URL with a token in it, tracing headers).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping

# Names passed through from the service's environment when present.
SAFE_VARIABLES = frozenset(
    {"PATH", "LANG", "LANGUAGE", "TZ", "TERM", "USER", "LOGNAME", "VIRTUAL_ENV", "SYSTEMROOT"}
)
_SECRET_NAME = re.compile(
    r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE|AUTH|COOKIE|SESSION"
    r"|_URL$|_URI$|_DSN$|^DATABASE|^NATS|^ANTHROPIC|^AWS_|^AZURE_|^GCP_|^GOOGLE_|^AETHER_"
)


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it may hold a credential or an address
    of one of the service's own backends (never passed to a command).

    Remembered by name: every attempt asks of every variable of the runner's environment
    (its transcript's redaction), and the expression, tried at each position of a name,
    took 2 µs a name, a tenth of a millisecond or more an attempt."""
    return bool(_SECRET_NAME.search(name.upper()))


def harmless_environment(
    source: Mapping[str, str], passed: Iterable[str] = (), also: Iterable[str] = ()
) -> dict[str, str]:
    """The variables of ``source`` a command may see: ``SAFE_VARIABLES``, ``LC_*``,
    ``also`` and the operator's ``passed`` names, none whose name looks secret."""
    wanted = SAFE_VARIABLES | frozenset(passed) | frozenset(also)
    return {
        name: value
        for name, value in source.items()
        if (name in wanted or name.startswith("LC_")) and not is_secret_name(name)
    }

"""The ``aether`` command line and the local stack it runs.

httpx imports its own command line (click, rich and pygments, about 80 ms) whenever they
are installed, and here they are: Litestar needs them. Nothing in a process of this
package runs httpx's command line, and a short command such as ``aether mission show``
takes 0.1–0.2 s of CPU all told, so it is marked missing before httpx is first imported;
httpx then defines its ``main`` as a stub that says what is missing.
"""

import sys

sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # None: "not there"

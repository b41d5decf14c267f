"""Tell a GCE host which seed this VM consumed, through a guest attribute.

On Google Compute Engine a VM with `enable-guest-attributes=TRUE` can publish
small values under `instance/guest-attributes/<namespace>/<key>` on its metadata
server by PUT with the header `Metadata-Flavor: Google` (GCE documentation,
"Set and query guest attributes"). We publish `seedtool/consumed = <seed id>` so
the trusted host can later remove the seed from the instance's metadata
(`--scrub-after-boot`). It is a courtesy: any failure is ignored, the timeout is
short, and it is only attempted when cloud-init's datasource is GCE, so no other
platform ever sees a request. Only the seed id is sent. Standard library only.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request

GUEST_ATTRIBUTE_URL = (
    "http://metadata.google.internal/computeMetadata/v1/instance/guest-attributes/"
    "seedtool/consumed"
)
TIMEOUT = 2.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def report_consumed(seed_id: str, url: str = GUEST_ATTRIBUTE_URL, timeout: float = TIMEOUT) -> bool:
    """PUT the seed id to the guest attribute; True on a 2xx answer, False otherwise."""
    if not re.fullmatch(r"[0-9a-f]{32}", seed_id):
        return False
    req = urllib.request.Request(
        url,
        data=seed_id.encode("ascii"),
        method="PUT",
        headers={"Metadata-Flavor": "Google", "Content-Type": "text/plain"},
    )
    # the metadata server is reached directly: never through an HTTP proxy
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    try:
        with opener.open(req, timeout=timeout) as resp:
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False

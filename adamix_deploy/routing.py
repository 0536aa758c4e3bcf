"""How a mixture module chooses its expert(s) on a forward call.

Training always routes stochastically (one uniformly random expert per side, per module, per call: AdaMix
has no gate). At inference the mode is chosen explicitly:

- ``average``  the AdaMix merge: each side's expert weights are averaged into one module (one module's cost)
- ``expert:i`` expert i on every side that is not shared
- ``random``   the training rule at inference: a fresh random expert per side per call
- ``ensemble`` the mean of the M experts' outputs, expert i on both sides (M times the cost)
"""

from __future__ import annotations

from dataclasses import dataclass

from adamix_deploy.contracts.errors import AdamixError

MODES = ("average", "random", "ensemble", "expert")


@dataclass(frozen=True)
class Routing:
    mode: str = "average"
    expert: int = 0  # only read when mode == "expert"

    @classmethod
    def parse(cls, text: str) -> Routing:
        """Parse ``average``, ``random``, ``ensemble`` or ``expert:i``."""
        text = text.strip()
        if text.startswith("expert:"):
            index = text.split(":", 1)[1]
            if not index.isdigit():
                raise AdamixError(f"routing {text!r}: expected expert:<index>, e.g. expert:0")
            return cls("expert", int(index))
        if text not in ("average", "random", "ensemble"):
            raise AdamixError(f"unknown routing {text!r}: choose average, random, ensemble or expert:<index>")
        return cls(text)

    def __str__(self) -> str:
        return f"expert:{self.expert}" if self.mode == "expert" else self.mode

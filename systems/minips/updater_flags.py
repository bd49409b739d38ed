"""``--updater``, ``--lr`` and ``--lam``: the servers' update rule from the command line.

An app names its own rule (sparse LR: L1-proximal AdaGrad; the MLP: SGD), and
``--updater`` swaps it. The rule's parameters live in two places, the servers' update
and what the workers assume (the objective they print, the KKT filter), so the flags are
reconciled here before anything starts: one learning rate, one L1 strength, and no flag
that would be dropped without a word.
"""

from __future__ import annotations

from typing import Any


def updater_spec(app: dict[str, Any], text: str | None, lam: float | None,
                 lr: float) -> dict[str, Any] | None:
    """The ``--updater`` rule the servers run (None: the app's own), with ``app``'s
    ``lam`` and ``lr`` made to agree with it; refuses what cannot agree."""
    updater = _updater(text)
    _one_lam(app, updater, lam)
    _one_lr(app, updater, lr)
    return updater


def _updater(text: str | None) -> dict[str, Any] | None:
    """``--updater adagrad`` or ``--updater l1prox:lr=0.05,lam=0.001``: the servers' update
    rule instead of the app's (``updaters.UPDATERS``), checked before anything starts."""
    if not text:
        return None
    from . import updaters

    name, _, params = text.partition(":")
    spec: dict[str, Any] = {"name": name}
    for item in filter(None, params.split(",")):
        key, eq, value = item.partition("=")
        try:
            spec[key.strip()] = float(value) if eq else None
        except ValueError:
            raise ValueError(f"--updater {text}: {item!r} is not key=number") from None
        if not eq:
            raise ValueError(f"--updater {text}: {item!r} is not key=number")
    updaters.make(spec)  # an unknown name or parameter fails here, with the choices
    return spec


def _one_lam(app: dict[str, Any], updater: dict[str, Any] | None, given: float | None) -> None:
    """Sparse LR's L1 strength lives in two places: the servers' ``l1prox`` update uses
    it, and the workers' objective and KKT filter assume it. With ``--updater l1prox``
    both take one value (the updater's if it names one, else ``--lam``'s), so the
    objective printed is the one the servers minimise; two different values are refused.
    With another updater the servers minimise the loss alone: the objective printed is
    the loss, and ``--lam`` and the KKT filter (which drops the gradients an L1 step
    would not have applied, and that sgd or adagrad would: another model) are refused."""
    if app["name"] != "sparse_lr" or not updater:
        return
    if updater["name"] != "l1prox":
        bad = [f for f, v in (("--lam", given is not None),
                              ("--filters kkt", "kkt" in app["filters"])) if v]
        if bad:
            raise ValueError(f"{' and '.join(bad)} with --updater {updater['name']}: "
                             f"only l1prox has an L1 term (the KKT filter would drop "
                             f"gradients these servers apply); use --updater l1prox")
        app["lam"] = 0.0
        return
    if "lam" not in updater:
        updater["lam"] = app["lam"]
    elif given is not None and given != updater["lam"]:
        raise ValueError(f"--lam {given} and --updater lam={updater['lam']:g}: the servers "
                         "would minimise another objective than the workers report; "
                         "give one of them")
    app["lam"] = updater["lam"]


def _one_lr(app: dict[str, Any], updater: dict[str, Any] | None, given: float | None) -> None:
    """The learning rate is the servers' (the workers only compute gradients). With
    ``--updater``, its rate is: its own ``lr=``; else ``--lr``; else, for the app's own
    rule named explicitly, the app's rate (``--updater sgd`` for the MLP ran at SGD's
    0.1 where the app's rule runs at 0.25); else the rule's default. Two different
    rates are refused, and so is ``--lr`` with a rule that has none (sum); the spec
    records the rate that runs (``--lr`` used to be dropped without a word)."""
    import dataclasses

    from .apps import describe
    from .updaters import UPDATERS

    if not updater:
        return
    fields = {f.name: f.default for f in dataclasses.fields(UPDATERS[updater["name"]])}
    if "lr" not in fields:
        if given:
            raise ValueError(f"--lr with --updater {updater['name']}: that rule has no "
                             f"learning rate")
        return
    if "lr" in updater:
        if given and updater["lr"] != given:
            raise ValueError(f"--lr {given:g} and --updater lr={updater['lr']:g}: the "
                             f"servers run one learning rate; give one of them")
    elif given:
        updater["lr"] = given
    elif describe(app)["updater"]["name"] == updater["name"] and "lr" in app:
        updater["lr"] = app["lr"]
    if "lr" in app:
        app["lr"] = updater.get("lr", fields["lr"])

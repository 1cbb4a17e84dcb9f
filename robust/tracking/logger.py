"""Weights & Biases tracking for Lightning: an offline-by-default logger, and the wandb run of a
measuring command (``start_run`` / ``run_path`` / ``finish_run``). Reading a run back is
:mod:`robust.tracking.records`."""

from __future__ import annotations

import configparser
import netrc
import os
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import urlsplit

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

__all__ = ["WandbLogger", "finish_run", "run_path", "start_run", "wandb_logger", "wandb_mode"]


def _settings_files() -> list[Path]:
    config_dir = os.environ.get("WANDB_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".config", "wandb")
    workspace = Path(os.environ.get("WANDB_DIR") or ".") / "wandb" / "settings"
    return [Path(config_dir) / "settings", workspace]  # later wins, as in wandb


def wandb_mode() -> str:
    """The wandb mode to use without touching the network.

    ``$WANDB_MODE`` if set; else a ``mode`` in wandb's settings files; else ``"online"`` only if an API
    key is available (``$WANDB_API_KEY``, ``$WANDB_IDENTITY_TOKEN_FILE``, ``api_key`` in a settings file,
    or a netrc entry for the server host); otherwise ``"offline"``.
    """
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    settings: dict[str, str] = {}
    for path in _settings_files():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except (configparser.Error, OSError):
            continue
        if parser.has_section("default"):
            settings.update(parser["default"])
    if settings.get("mode"):
        return settings["mode"]
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE") or settings.get("api_key"):
        return "online"
    base_url = os.environ.get("WANDB_BASE_URL") or settings.get("base_url") or "https://api.wandb.ai"
    host = urlsplit(base_url).hostname or ""
    candidates = [os.environ["NETRC"]] if os.environ.get("NETRC") else ["~/.netrc", "~/_netrc"]
    for candidate in candidates:
        try:
            creds = netrc.netrc(os.path.expanduser(candidate)).authenticators(host)
        except (OSError, netrc.NetrcParseError):
            continue
        if creds and creds[2]:
            return "online"
    return "offline"


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger``, offline unless wandb is configured online (see :func:`wandb_mode`).

    ``offline=None`` picks the mode automatically; ``True``/``False`` force it. Offline runs land in
    ``<save_dir>/wandb/offline-run-*/`` (see :attr:`run_dir`) and upload later with ``wandb sync <dir>``.
    ``log_model=True`` (the default here) logs the checkpoints as a wandb ``model`` artifact when
    training ends, offline too (``"all"``: every checkpoint as it is written; False: none).
    """

    def __init__(
        self,
        name: Optional[str] = None,
        save_dir: str = ".",
        offline: Optional[bool] = None,
        project: str = "robust",
        log_model: Union[bool, str] = True,
        **kwargs: Any,
    ) -> None:
        kwargs = {k: v for k, v in kwargs.items() if v is not None}  # jsonargparse passes every wandb.init default
        if "mode" not in kwargs:
            kwargs["mode"] = wandb_mode() if offline is None else ("offline" if offline else "online")
        os.makedirs(save_dir, exist_ok=True)  # wandb silently falls back to /tmp for a missing dir
        # `offline` is not forwarded: Lightning's version mutates os.environ["WANDB_MODE"].
        super().__init__(name=name, save_dir=save_dir, project=project, log_model=log_model, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # wandb 0.31 warns about it even when None
            self._wandb_init.pop("anonymous", None)

    @property
    def mode(self) -> str:
        return self._wandb_init["mode"]

    @property
    def run_dir(self) -> Optional[Path]:
        """Local run folder holding ``run-<id>.wandb``; None until the run has started."""
        run = self._experiment
        sync_dir = getattr(getattr(run, "settings", None), "sync_dir", None)
        return Path(sync_dir) if sync_dir else None

    def finish(self) -> Optional[Path]:
        """End the run and close its log; returns :attr:`run_dir`.

        ``wandb.finish()`` returns before wandb-core writes the log's last partial block (it is buffered
        until the file closes), so this also calls ``wandb.teardown()``, which waits for wandb-core to exit.
        """
        import wandb

        if self._experiment is not None:
            self._experiment.finish()
            wandb.teardown()
        return self.run_dir


def wandb_logger(
    project: str = "robust",
    name: Optional[str] = None,
    save_dir: str = ".",
    offline: Optional[bool] = None,
    **kw: Any,
) -> WandbLogger:
    """A :class:`WandbLogger`; offline by default unless wandb is configured online."""
    return WandbLogger(name=name, save_dir=save_dir, offline=offline, project=project, **kw)


def start_run(project: str, out_dir: str | os.PathLike, job_type: str, config: dict[str, Any]) -> Any:
    """A wandb run for a command's report (offline unless wandb is configured online), in ``out_dir``."""
    import wandb

    return wandb.init(project=project, mode=wandb_mode(), dir=str(out_dir), job_type=job_type, config=config)


def run_path(run: Any) -> str:
    """Where a reader opens the run: ``entity/project/id`` online, the local run folder offline."""
    if getattr(getattr(run, "settings", None), "mode", None) == "offline" or getattr(run, "offline", False):
        return str(Path(run.settings.sync_dir))
    return "/".join(str(p) for p in run.path) if isinstance(run.path, (list, tuple)) else str(run.path)


def finish_run(run: Any) -> None:
    """``run.finish()`` and wait for wandb-core to close the log (see :meth:`WandbLogger.finish`)."""
    import wandb

    run.finish()
    wandb.teardown()

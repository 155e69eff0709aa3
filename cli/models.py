"""The commands about components and model folders: ``list-plugins``, ``describe``, ``build``, ``info``."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from genvae.cli.commands import (
    console,
    registry,
)
from genvae.core.components import COMPONENT_KINDS, LatentLayout
from genvae.core.errors import GenvaeError, shorten


@click.command("list-plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_plugins(as_json: bool) -> None:
    """Plugins with their status and the components, datasets, presets and commands they provide."""
    reg = registry()
    commands = plugin_commands(reg)
    plugins = [
        {
            "name": p.name,
            "module": p.module,
            "distribution": p.distribution,
            "version": p.version,
            "builtin": p.builtin,
            "status": p.status,
            "error": p.error,
            "provides": {k: sorted(v) for k, v in p.provides.items()}
            | ({"command": commands[p.name]} if p.name in commands else {}),
        }
        for p in reg.plugins.values()
    ]
    presets = [{"name": n, "plugin": e.plugin, "help": e.help} for n, e in sorted(reg.entries["preset"].items())]
    if as_json:
        click.echo(json.dumps({"plugins": plugins, "presets": presets}, indent=2))
        return
    table = Table(title="genvae plugins", show_lines=False)
    for col in ("plugin", "distribution", "source", "status", "provides"):
        table.add_column(col)
    for p in plugins:
        dist = f"{p['distribution'] or '?'} {p['version'] or ''}".strip()
        status = {"loaded": "[green]loaded[/]", "disabled": "[yellow]disabled[/]"}.get(
            p["status"], f"[red]{p['status']}[/]: {p['error']}"
        )
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in p["provides"].items())
        table.add_row(p["name"], dist, "built-in" if p["builtin"] else "third-party", status, provides)
    console.print(table)
    ptable = Table(title="presets")
    for col in ("preset", "plugin", "description"):
        ptable.add_column(col)
    for p in presets:
        ptable.add_row(p["name"], p["plugin"], p["help"])
    console.print(ptable)


@click.command("describe")
@click.argument("kind", type=click.Choice(COMPONENT_KINDS))
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def describe(kind: str, name: str, as_json: bool) -> None:
    """A component's purpose, options (type, default, help), capabilities; a decoder's output space; for losses,
    role, phases and branches."""
    import inspect

    import attrs

    from genvae.core.options import describe_options
    from genvae.core.registry import KIND_NAMES

    entry = registry().get(kind, name)
    cls = entry.obj

    def type_text(t) -> str:
        if isinstance(t, str) or getattr(t, "__origin__", None) is not None:
            return str(t).replace("typing.", "")
        return getattr(t, "__name__", str(t))

    types = {a.name: type_text(a.type) for a in attrs.fields(cls.Options)}
    info = {
        "kind": kind,
        "name": name,
        "plugin": entry.plugin,
        "summary": inspect.getdoc(cls) or "",
        "options": [
            {"name": n, "type": types.get(n), "default": d, "help": h} for n, d, h in describe_options(cls.Options)
        ],
        "provides": sorted(getattr(cls, "provides", ())),
        "requires": sorted(getattr(cls, "requires", ())),
    }
    if kind == "loss":
        info.update(
            role=cls.role,
            phases=list(cls.phases),
            branches=list(cls.branches),
            phase_order=list(cls.phase_order),
            may_skip=cls.may_skip,
        )
    if kind == "decoder":
        info["output"] = cls.output
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    console.print(f"[bold]{KIND_NAMES[kind]} '{name}'[/] (plugin {entry.plugin}): {info['summary']}", highlight=False)
    extra = [f"{k}: {', '.join(info[k])}" for k in ("provides", "requires", "phases", "branches") if info.get(k)]
    if kind == "decoder":
        extra.insert(0, f"output space: {info['output']}")
    if kind == "loss":
        extra.insert(0, f"role: {info['role']}")
    if extra:
        console.print(" | ".join(extra), highlight=False)
    table = Table(title="options")
    for col in ("option", "type", "default", "help"):
        table.add_column(col)
    for o in info["options"]:
        table.add_row(o["name"], o["type"] or "", o["default"], o["help"])
    console.print(table)


# -- build / info ----------------------------------------------------------------------------------


def _updates_text(updates) -> str:
    """A step's updates as ``mi@posterior, model@prior:fresh, discriminator`` (the branch only where it is not all)."""
    return ", ".join(
        u["phase"] + (f"@{u['branch']}" if u["branch"] != "all" else "") + (":fresh" if u["fresh"] else "")
        for u in updates
    )


def latent_text(layout: LatentLayout) -> str:
    """The summary's latent: shape, size and groups ("[448] (448 values, 5 levels of 64, 64, 64, 128, 128)")."""
    sizes = layout.group_sizes
    if layout.num_groups <= 1:
        groups = ""
    elif len(set(sizes)) == 1:
        groups = f", {layout.num_groups} {layout.group_label}s of {sizes[0]}"
    else:
        groups = f", {layout.num_groups} {layout.group_label}s of {', '.join(map(str, sizes))}"
    return f"{list(layout.shape)} ({layout.numel} values{groups})"


def _param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def print_summary(model, title: str) -> None:
    from genvae.core.registry import KIND_NAMES

    spec = model.spec
    table = Table(title=title)
    for col in ("component", "name", "parameters", "options"):
        table.add_column(col)
    for comp in model.components().values():
        kind = KIND_NAMES.get(comp.kind, comp.kind)
        from genvae.core.options import options_to_dict

        opts = ", ".join(
            f"{k}={shorten(v, 60) if isinstance(v, dict) else v}" for k, v in options_to_dict(comp.options).items()
        )
        label = comp.name if comp.kind != "loss" else f"{comp.name} (weight {comp.weight:g})"
        table.add_row(kind, label, f"{_param_count(comp):,}", opts)
    console.print(table)
    layout = model.layout
    console.print(
        f"image {spec.channels}x{spec.image_size}x{spec.image_size} | latent {latent_text(layout)}"
        f" | decoder input {list(model.transform.output_shape)} | "
        f"updates: {_updates_text(model.updates(spec.train.schedule))}"
    )
    generator = sum(_param_count(m) for m in model.transform.generation_modules()) + _param_count(model.decoder)
    autoencoder = sum(_param_count(m) for m in (model.encoder, model.transform, model.decoder))
    console.print(
        f"parameters: {_param_count(model):,} in all | encoder + latent transform + decoder: "
        f"{autoencoder:,} | generator side (latent generation + decoder): {generator:,}"
    )


@click.command()
@click.option("--preset", help="A named recipe (genvae list-plugins shows them).")
@click.option("--encoder", help="Encoder name; alone, it brings its counterpart decoder and latent transform.")
@click.option("--decoder", help="Decoder name.")
@click.option("--prior", help="Prior name (default: normal).")
@click.option("--transform", help="Latent transform name (fc, conv, ...).")
@click.option(
    "--loss",
    "losses",
    help="Comma list of losses, NAME or NAME:WEIGHT; mse and kl are added if "
    "no reconstruction or divergence loss is named.",
)
@click.option("--image-size", type=click.IntRange(1, 8192), help="Square image size in pixels.")
@click.option("--channels", type=click.Choice(["1", "3"]), help="Image channels, 1 or 3.")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KIND.OPTION=VALUE",
    help="Override an option: encoder.width=32, loss.kl.weight=0.5, train.lr=3e-4 (repeatable).",
)
@click.option(
    "--stage1",
    type=click.Path(file_okay=False, exists=True),
    help="A trained model the new one builds on (--preset stage2): sets encoder.stage1.",
)
@click.option(
    "-o",
    "--output",
    "folder",
    required=True,
    type=click.Path(file_okay=False),
    help="Model folder to write (config.json + model.safetensors).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace the model in an existing genvae model folder (only files genvae "
    "wrote there are removed; other folders are never built into).",
)
def build(
    preset, encoder, decoder, prior, transform, losses, image_size, channels, sets, stage1, folder, force
) -> None:
    """Compose a model from components, check it, and write a freshly initialised model folder."""
    from genvae.cli.training import command_record
    from genvae.core.checkpoint import CONFIG, create_model_folder
    from genvae.core.compose import compose_spec
    from genvae.core.folder import ModelFolder
    from genvae.core.model import new_model

    out = Path(folder)
    ModelFolder(out).check_can_build_into()
    if (out / CONFIG).exists() and not force:
        raise GenvaeError(f"{out} already holds a model; choose another -o folder or pass --force")
    if stage1 is not None:  # a model that builds on a trained one (Stage2): its encoder's stage1 option
        sets = (*sets, f"encoder.stage1={json.dumps(str(stage1))}")
    added: list[str] = []  # the default losses compose_spec adds (none when a loss is the whole objective)
    spec = compose_spec(
        preset=preset,
        encoder=encoder,
        transform=transform,
        decoder=decoder,
        prior=prior,
        losses=losses,
        image_size=image_size,
        channels=int(channels) if channels else None,
        sets=sets,
        registry=registry(),
        added_losses=added,
    )
    model = new_model(spec, registry())
    create_model_folder(model, out, force=force, command=command_record())
    print_summary(model, f"built {out}" + (f" from preset '{spec.preset}'" if spec.preset else ""))
    if added:
        roles = ", ".join(f"{name} ({registry().component('loss', name).role})" for name in added)
        console.print(f"added default loss(es): {roles}, since no loss named has that role", highlight=False)


@click.command()
@click.argument("folder", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the resolved spec as JSON.")
def info(folder, as_json) -> None:
    """Show a model folder: its components, parameter counts, latent and training state."""
    from genvae.core.checkpoint import latest_checkpoint, load_model

    model = load_model(folder, registry=registry())
    if as_json:
        click.echo(json.dumps(model.resolved_spec().to_dict(), indent=2))
        return
    print_summary(model, f"model {folder}")
    last = latest_checkpoint(folder)
    console.print(f"last checkpoint: {last.name if last else 'none (not trained yet)'}")


def plugin_commands(reg) -> dict[str, list[str]]:
    """The commands each plugin adds, by plugin name: its hook run on an empty group (a failing hook adds none)."""
    out: dict[str, list[str]] = {}
    for record, plugin in reg.command_plugins:
        probe = click.Group()
        try:
            reg.add_commands(record, plugin, probe)
        except Exception:  # add_plugin_commands marks the plugin failed
            continue
        if probe.commands:
            out[record.name] = sorted(probe.commands)
    return out


#: the commands this module adds to the genvae group
COMMANDS = [list_plugins, describe, build, info]

"""Where a verified output goes: a staging folder, then the model card, the push, and the local copy.

Nothing is half-published: each type is written into a fresh staging folder, and only a verified
output gets its card, is pushed in one commit (the Hub layer deletes a repo it created if the
upload fails) and is renamed into its final folder; the caller removes the staging folder whatever
happened.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import ModelCard

from . import card as model_card
from .events import EventStream
from .hub import Hub, Upload, repo_url
from .plan import JobPlan
from .recipes import Recipe
from .report import RecipeResult
from .source import SourceInfo
from .spec import JobSpec


@dataclass(frozen=True, kw_only=True)
class Published:
    """Where the publish stage put an output."""

    url: str | None  # pushed
    output_dir: str | None  # kept on this machine


@dataclass(kw_only=True)
class Publisher:
    """Publishes the outputs of one job."""

    spec: JobSpec
    plan: JobPlan
    hub: Hub
    events: EventStream
    workdir: Path

    @property
    def info(self) -> SourceInfo:
        return self.plan.info

    def staging_folder(self, recipe: Recipe, target: str) -> Path:
        """A fresh folder beside the final place (so the final move is a rename), or in the job folder."""
        if self.spec.local_dir is None:
            return Path(tempfile.mkdtemp(prefix=f"{recipe.suffix}-", dir=self.workdir))
        parent = self.spec.local_folder(target).parent
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{recipe.suffix}.partial-", dir=parent))

    def open_upload(self, recipe: Recipe, target: str) -> Upload:
        """Open the target for an output uploaded as it is written (the caller abandons it if the job fails)."""
        upload = Upload(self.hub, target, private=self.plan.private, replace=self.spec.overwrite)
        upload.open()
        self.events.log(
            f"{target}: each finished shard goes to the Hub's storage now and is deleted here; one commit at the "
            "end makes the model appear",
            quant_type=recipe.name,
        )
        return upload

    def publish(self, staging: Path, recipe: Recipe, result: RecipeResult, upload: Upload | None = None) -> Published:
        """The publish stage: card, then push (completing `upload` when shards went ahead) and/or keep."""
        self.write_card(staging, recipe, result)
        url = self.push(staging, recipe, result, upload) if self.spec.push else None
        output_dir = None
        if self.spec.local_dir is not None:
            final = self.spec.local_folder(result.target_repo)
            replace_folder(staging, final)
            output_dir = str(final)
        return Published(url=url, output_dir=output_dir)

    def write_card(self, folder: Path, recipe: Recipe, result: RecipeResult) -> None:
        with self.events.stage("card", "writing the model card", quant_type=recipe.name):
            card = model_card.render(
                self.info,
                recipe,
                result,
                made_on_hardware=self.plan.hardware,
                eval_text_name=self.plan.texts.eval_name,
            )
            card = ModelCard(self.events.scrub(card.content))  # a path or a name may carry a secret
            if self.spec.push:
                self.hub.call("validating the model card", card.validate)
            card.save(folder / "README.md")

    def push(self, folder: Path, recipe: Recipe, result: RecipeResult, upload: Upload | None) -> str:
        info, target = self.info, result.target_repo
        revision = f" at {info.revision[:12]}" if info.revision else ""
        named = info.repo_id or info.name  # a local source by its folder's name, never this machine's path
        message = self.events.scrub(f"Quantize {named}{revision} with torchao {recipe.name}")
        description = self.events.scrub(f"torchao config: {result.torchao_config}\n\n{result.command}")
        with self.events.stage("push", f"pushing to {target} in one commit", quant_type=recipe.name):
            if upload is not None:
                url, _ = upload.commit(folder, message=message, description=description)
            else:
                url, _ = self.hub.push(
                    folder,
                    target,
                    private=self.plan.private,
                    message=message,
                    description=description,
                    replace=self.spec.overwrite,
                )
        self.events.log(f"pushed {repo_url(target)}", quant_type=recipe.name)
        return url


def replace_folder(staging: Path, final: Path) -> None:
    """Move a finished output into place; an existing folder (--overwrite) goes only once the new one is ready."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(final)

"""Helpers shared by the training tests: loading the session's tiny Mirage folder and few-second CPU configs."""

from modeling_mirage import MirageForConditionalGeneration, MirageProcessor
from trainers import MirageSFTConfig

# What the tiny recipes train with: a 64-px map cell becomes one 28-px merged vision token.
TINY_IMAGE_SCALE = 0.4375


def load(tiny_mirage_dir: str) -> tuple[MirageForConditionalGeneration, MirageProcessor]:
    """A fresh model and processor from the (read-only) tiny Mirage folder, the processor resizing images by
    `TINY_IMAGE_SCALE` (few vision tokens, fast steps)."""
    model = MirageForConditionalGeneration.from_pretrained(tiny_mirage_dir)
    return model, MirageProcessor.from_pretrained(tiny_mirage_dir, image_scale=TINY_IMAGE_SCALE)


def fast_args(output_dir, **overrides) -> MirageSFTConfig:
    """A few-second CPU run: tiny batch, high constant learning rate, fp32, no checkpointing, log every step."""
    kwargs = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=4,
        max_steps=30,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        activation_checkpointing=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    kwargs.update(overrides)
    return MirageSFTConfig(**kwargs)

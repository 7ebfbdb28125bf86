"""Packaging for mirage-vlm: Mirage latent visual reasoning on Qwen2.5-VL, Hub-native."""

from setuptools import setup

# Fast-moving libraries are pinned exactly: the remote code, the trainers and TRL's private hooks are tested
# against these versions and nothing else. torch/torchvision are the pair that installs together here.
INSTALL_REQUIRES = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "transformers==5.24.0",
    "trl==1.16.0",
    "peft==0.21.2",
    "accelerate==1.15.0",
    "datasets==5.2.0",
    "evaluate==0.4.6",
    "huggingface-hub==2.4.0",
    "tokenizers",
    "gymnasium==0.29.1",  # the official VSP maps are FrozenLake renders of exactly this release
    "pygame",  # gymnasium's rgb_array renderer
    "pillow",
    "matplotlib>=3.8",  # evaluation figures
    "numpy",
    "pyyaml",
    "tqdm",
]

EXTRAS = {"dev": ["pytest", "ruff", "hypothesis"]}

setup(
    name="mirage-vlm",
    version="0.1.0",
    description="Mirage: vision-language models that reason with latent visual tokens (arXiv 2506.17218)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["modeling_mirage", "trainers", "mirage_tasks", "mirage_tiny", "hub_cards"],
    package_data={
        "mirage_tasks": ["metrics/*/*.py", "data/*.tsv"],
        "mirage_tiny": ["pretrained/*"],  # the stage-0 pretrained tiny base (safetensors, tokenizer, processor)
        "hub_cards": ["templates/*.md"],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)

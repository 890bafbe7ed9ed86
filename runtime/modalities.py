"""Modality and task names in one place (torch-free).

The model's latent slots are *modalities*, named as the release names them (``rgb``, ``depth``, ``normal``,
``mask``); users of the SDK, the CLI and the served models ask for *maps* by their task names (``depth``,
``normals``, ``segmentation``; ``rgb`` for the generated image). :data:`TASK_MODALITY` is the one table between
the two; every other list of names is derived from it.

Order: a bundle's modality order is its manifest's (``manifest.modalities``, from the model config) and always
wins; :data:`RELEASE_MODALITIES` is only the release's order, the default of a new model config. Functions that
return several names take the modality order they should follow.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Release modality names (the slots of the 16-channel latent).
RGB, DEPTH, NORMAL, MASK = "rgb", "depth", "normal", "mask"
#: The release's modality order (the default ``ModelConfig.modalities``; a bundle's manifest order wins).
RELEASE_MODALITIES: tuple[str, ...] = (RGB, DEPTH, NORMAL, MASK)

#: User-facing task (map) names.
RGB_TASK, DEPTH_TASK, NORMALS_TASK, SEGMENTATION_TASK = "rgb", "depth", "normals", "segmentation"
#: The one table: task name -> modality name.
TASK_MODALITY: dict[str, str] = {RGB_TASK: RGB, DEPTH_TASK: DEPTH, NORMALS_TASK: NORMAL, SEGMENTATION_TASK: MASK}
#: Modality name -> task name.
MODALITY_TASK: dict[str, str] = {modality: task for task, modality in TASK_MODALITY.items()}

#: Mask images tell segments apart only by colour: two segments are never painted closer than this (Euclidean
#: distance of 0..255 RGB), so a decoder may take closer colours for one segment's drift.
MIN_MASK_COLOUR_DISTANCE = 64.0

#: The modality every perception is conditioned on (the input photo) and every generation produces.
IMAGE_MODALITY = RGB


def task_modality(task: str) -> str:
    """The modality name of a task (``"normals"`` -> ``"normal"``); ValueError naming the choices."""
    if task not in TASK_MODALITY:
        raise ValueError(f"unknown task {task!r}; choose from {list(TASK_MODALITY)}")
    return TASK_MODALITY[task]


def modality_task(modality: str) -> str:
    """The task name of a modality (``"mask"`` -> ``"segmentation"``); ValueError naming the choices."""
    if modality not in MODALITY_TASK:
        raise ValueError(f"unknown modality {modality!r}; choose from {list(MODALITY_TASK)}")
    return MODALITY_TASK[modality]


def perception_modalities(modalities: Iterable[str] = RELEASE_MODALITIES) -> tuple[str, ...]:
    """The modalities a perception predicts (all but the image), in the given (manifest) order."""
    return tuple(m for m in modalities if m != IMAGE_MODALITY)


def perception_tasks(modalities: Iterable[str] = RELEASE_MODALITIES) -> tuple[str, ...]:
    """Task names of :func:`perception_modalities`, in the given (manifest) order."""
    return tuple(modality_task(m) for m in perception_modalities(modalities))


def condition_tasks(modalities: Iterable[str] = RELEASE_MODALITIES) -> tuple[str, ...]:
    """The task names ``generate`` accepts as a condition map (every map but the image), in the given order."""
    return perception_tasks(modalities)


#: The release's perception tasks / condition tasks (depth, normals, segmentation), for defaults and CLI choices.
PERCEPTION_TASKS: tuple[str, ...] = perception_tasks()
CONDITION_TASKS: tuple[str, ...] = condition_tasks()
#: The release's perception modalities (depth, normal, mask).
PERCEPTION_MODALITIES: tuple[str, ...] = perception_modalities()

"""Rendering the kustomize overlays.

``render`` uses the real thing when it is installed (``kustomize build`` or
``kubectl kustomize``). Where neither is (a bare CI machine), it uses ``build`` below:
the few kustomize features ``k8s/`` uses (resources, components, literal Secret generators,
namespace, images, replicas), with the JSON patches applied by the ``jsonpatch`` library
(RFC 6902). It refuses any field or option it does not implement, so it can never quietly
render something else, and wherever kubectl is present a test renders every overlay both
ways and requires the same objects. No maintained Python library renders kustomizations,
so this stays as small as ``k8s/`` allows.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

Doc = dict[str, Any]

# libyaml's parser where PyYAML has it: the same safe loading at a fraction of the pure
# Python parser's CPU (parsing the rendered overlays was a third of these tests' time).
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(text: str) -> Any:
    return yaml.load(text, Loader=SAFE_LOADER)


def load_all(text: str) -> list[Doc]:
    """The documents of a YAML stream, less the empty ones."""
    return [doc for doc in yaml.load_all(text, Loader=SAFE_LOADER) if doc]


KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "components",
    "images",
    "replicas",
    "patches",
    "secretGenerator",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "RuntimeClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "APIService",
}
SCALABLE = {"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"}


class Unsupported(Exception):
    """The kustomization uses something this implementation does not do."""


# Components and the `labels`-era fields need kustomize 5 (kubectl 1.27 and later embed
# it); an older one is passed over rather than trusted.
MINIMUM_KUSTOMIZE = (5, 0)


def real_renderer() -> list[str] | None:
    """The command of an installed kustomize 5 or later, if there is one."""
    for command, version in (
        (["kustomize", "build"], ["kustomize", "version"]),
        (["kubectl", "kustomize"], ["kubectl", "version", "--client"]),
    ):
        if shutil.which(command[0]) and _kustomize_version(version) >= MINIMUM_KUSTOMIZE:
            return command
    return None


def _kustomize_version(command: list[str]) -> tuple[int, ...]:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return ()
    found = re.search(r"(?:Kustomize Version: |^)v?(\d+)\.(\d+)", out.stdout, re.M)
    return (int(found.group(1)), int(found.group(2))) if found else ()


def render(path: Path) -> tuple[list[Doc], str]:
    """The objects ``path`` renders to, and which renderer made them."""
    command = real_renderer()
    if command is None:
        return build(path), "built-in renderer (no kustomize or kubectl installed)"
    return render_with(command, path), " ".join(command)


def render_with(command: list[str], path: Path) -> list[Doc]:
    out = subprocess.run(
        [*command, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} {path} failed:\n{out.stderr}")
    return load_all(out.stdout)


# --- the built-in renderer ---------------------------------------------------------------


def build(path: Path) -> list[Doc]:
    """Render the kustomization in directory ``path``."""
    kustomization = _load_kustomization(path, "Kustomization")
    resources = _accumulate(path, kustomization)
    for component in kustomization.get("components", []):
        resources = _apply_component(path / component, resources)
    resources += _generate(kustomization)
    return _transform(kustomization, resources)


def _load_kustomization(path: Path, kind: str) -> Doc:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (path / name).is_file():
            data: Doc = load((path / name).read_text())
            break
    else:
        raise FileNotFoundError(f"no kustomization in {path}")
    unknown = set(data) - KUSTOMIZATION_FIELDS
    if unknown:
        raise Unsupported(f"{path}: fields {sorted(unknown)}")
    if data.get("kind", "Kustomization") != kind:
        raise Unsupported(f"{path}: expected a {kind}, found {data.get('kind')}")
    return data


def _accumulate(path: Path, kustomization: Doc) -> list[Doc]:
    out: list[Doc] = []
    for entry in kustomization.get("resources", []):
        target = path / entry
        if target.is_dir():
            out += build(target)
        else:
            out += load_all(target.read_text())
    return out


def _apply_component(path: Path, resources: list[Doc]) -> list[Doc]:
    component = _load_kustomization(path, "Component")
    if "components" in component or "namespace" in component:
        raise Unsupported(f"{path}: components or a namespace inside a component")
    resources = resources + _accumulate(path, component) + _generate(component)
    return _transform(component, resources)


def _generate(kustomization: Doc) -> list[Doc]:
    out: list[Doc] = []
    for spec in kustomization.get("secretGenerator", []):
        extra = set(spec) - {"name", "literals", "options", "type"}
        if extra or not (spec.get("options") or {}).get("disableNameSuffixHash"):
            raise Unsupported(f"secretGenerator {spec.get('name')}: only literals without a hash")
        values = dict(literal.split("=", 1) for literal in spec.get("literals", []))
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": spec["name"]},
                "type": spec.get("type", "Opaque"),
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
            }
        )
    return out


def _transform(kustomization: Doc, resources: list[Doc]) -> list[Doc]:
    resources = copy.deepcopy(resources)
    for patch in kustomization.get("patches", []):
        _patch(resources, patch)
    namespace = kustomization.get("namespace")
    if namespace:
        for doc in resources:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    for image in kustomization.get("images", []):
        _set_image(resources, image)
    for replicas in kustomization.get("replicas", []):
        for doc in resources:
            if doc["kind"] in SCALABLE and doc["metadata"]["name"] == replicas["name"]:
                doc["spec"]["replicas"] = replicas["count"]
    return resources


def _patch(resources: list[Doc], patch: Doc) -> None:
    target = patch.get("target") or {}
    if set(target) - {"kind", "name"} or set(patch) - {"target", "patch"}:
        raise Unsupported(f"patch {patch}: only JSON 6902 patches targeted by kind and name")
    operations = load(patch["patch"])
    if not isinstance(operations, list):
        raise Unsupported("strategic merge patches")
    matched = [
        doc
        for doc in resources
        if doc["kind"] == target.get("kind", doc["kind"])
        and doc["metadata"]["name"] == target.get("name", doc["metadata"]["name"])
    ]
    for doc in matched:
        # RFC 6902 as the ``jsonpatch`` library implements it: each document gets its own
        # copy of the operations, so no two share an added value.
        jsonpatch.JsonPatch(copy.deepcopy(operations)).apply(doc, in_place=True)


def _set_image(resources: list[Doc], image: Doc) -> None:
    if set(image) - {"name", "newName", "newTag"}:
        raise Unsupported(f"image {image}: only newName and newTag")
    for container in _containers(resources):
        name, tag = _split_image(container.get("image", ""))
        if name == image["name"]:
            new_tag = image.get("newTag", tag)
            container["image"] = image.get("newName", name) + (f":{new_tag}" if new_tag else "")


def _containers(resources: Iterable[Doc]) -> Iterable[Doc]:
    for doc in resources:
        spec = doc.get("spec") or {}
        pods = [spec, (spec.get("template") or {}).get("spec") or {}]
        job = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        pods.append(job.get("spec") or {})
        for pod in pods:
            yield from pod.get("initContainers") or []
            yield from pod.get("containers") or []


def _split_image(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return image, ""
    return name, tag


def canonical(docs: list[Doc]) -> dict[tuple[str, str, str], str]:
    """Objects by (kind, namespace, name), each as sorted JSON, Secrets' data decoded
    (kustomize wraps long base64 lines; Kubernetes reads both the same)."""
    out = {}
    for doc in docs:
        if doc["kind"] == "Secret":
            doc = {
                **doc,
                "data": {
                    k: base64.b64decode("".join(v.split())).decode()
                    for k, v in (doc.get("data") or {}).items()
                },
            }
        key = (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
        out[key] = json.dumps(doc, sort_keys=True)
    return out

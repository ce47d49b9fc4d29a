"""CustomResourceDefinitions through kubectl: served at once, schema validation, pruning and
defaults, printer columns, short names and categories, two versions, status and scale."""

import json
import textwrap
import time
import uuid

import pytest


def crd_yaml(group):
    return textwrap.dedent(
        f"""
        apiVersion: apiextensions.k8s.io/v1
        kind: CustomResourceDefinition
        metadata:
          name: backups.{group}
        spec:
          group: {group}
          scope: Namespaced
          names:
            plural: backups
            singular: backup
            kind: Backup
            shortNames: [bk]
            categories: [all]
          versions:
          - name: v1
            served: true
            storage: true
            subresources:
              status: {{}}
              scale:
                specReplicasPath: .spec.replicas
                statusReplicasPath: .status.replicas
            additionalPrinterColumns:
            - name: Schedule
              type: string
              jsonPath: .spec.schedule
            - name: Replicas
              type: integer
              jsonPath: .spec.replicas
            - name: Age
              type: date
              jsonPath: .metadata.creationTimestamp
            schema:
              openAPIV3Schema:
                type: object
                properties:
                  spec:
                    type: object
                    required: [schedule]
                    properties:
                      schedule:
                        type: string
                        pattern: '^[0-9*/ ,-]+$'
                      replicas:
                        type: integer
                        minimum: 0
                        default: 1
                      target:
                        x-kubernetes-int-or-string: true
                      options:
                        type: object
                        x-kubernetes-preserve-unknown-fields: true
                      retention:
                        type: string
                        enum: [short, long]
                        nullable: true
                  status:
                    type: object
                    properties:
                      replicas:
                        type: integer
          - name: v1beta1
            served: true
            storage: false
            schema:
              openAPIV3Schema:
                type: object
                x-kubernetes-preserve-unknown-fields: true
        """
    )


@pytest.fixture
def crd_group(kubectl):
    group = f"g{uuid.uuid4().hex[:6]}.corral.test"
    kubectl("apply", "-f", "-", input=crd_yaml(group))
    yield group
    kubectl.run("delete", "crd", f"backups.{group}", "--wait=false", check=False)


def test_crd_served_validated_and_printed(kubectl, ns, crd_group):
    crd = kubectl.json("get", "crd", f"backups.{crd_group}")
    conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conds["Established"] == "True"

    good = textwrap.dedent(
        f"""
        apiVersion: {crd_group}/v1
        kind: Backup
        metadata:
          name: nightly
        spec:
          schedule: "0 3 * * *"
          target: 8080
          options: {{anything: [1, 2, 3]}}
          unknownField: dropped
        """
    )
    kubectl("apply", "-n", ns, "--validate=false", "-f", "-", input=good)
    obj = kubectl.json("get", "backups", "nightly", "-n", ns)
    assert obj["spec"]["replicas"] == 1            # default
    assert "unknownField" not in obj["spec"]       # pruned
    assert obj["spec"]["options"] == {"anything": [1, 2, 3]}  # preserved
    assert obj["metadata"]["generation"] == 1

    table = kubectl("get", "bk", "-n", ns).splitlines()
    assert table[0].split() == ["NAME", "SCHEDULE", "REPLICAS", "AGE"]
    assert table[1].split()[:6] == ["nightly", "0", "3", "*", "*", "*"]
    assert "backup" in kubectl("get", "all", "-n", ns, "-o", "name")

    bad = good.replace('"0 3 * * *"', '"every night"').replace("nightly", "bad")
    p = kubectl.run("apply", "-n", ns, "--validate=false", "-f", "-", input=bad, check=False)
    assert p.returncode != 0 and "spec.schedule" in p.stderr
    p = kubectl.run("apply", "-n", ns, "--validate=false", "-f", "-", input=good.replace("target: 8080", "target: [1]").replace("nightly", "bad2"), check=False)
    assert p.returncode != 0 and "spec.target" in p.stderr

    kubectl("scale", "backup", "nightly", "-n", ns, "--replicas=4")
    assert kubectl.json("get", "backup", "nightly", "-n", ns)["spec"]["replicas"] == 4

    # The same object through the second served version.
    other = kubectl.json("get", f"backups.v1beta1.{crd_group}", "nightly", "-n", ns)
    assert other["apiVersion"] == f"{crd_group}/v1beta1"
    assert other["spec"]["replicas"] == 4

    exp = kubectl("explain", "backup.spec")
    assert "schedule" in exp


def test_crd_deletion_removes_objects_and_api(kubectl, ns):
    group = f"g{uuid.uuid4().hex[:6]}.corral.test"
    kubectl("apply", "-f", "-", input=crd_yaml(group))
    kubectl("apply", "-n", ns, "-f", "-", input=f"apiVersion: {group}/v1\nkind: Backup\nmetadata:\n  name: b\nspec:\n  schedule: '1 * * * *'\n")
    kubectl("delete", "crd", f"backups.{group}")
    deadline = time.time() + 10
    while time.time() < deadline:
        p = kubectl.run("get", f"backups.{group}", "-n", ns, check=False)
        if p.returncode != 0:
            break
        time.sleep(0.2)
    assert p.returncode != 0
    # Re-creating the CRD does not resurrect old objects.
    kubectl("apply", "-f", "-", input=crd_yaml(group))
    assert kubectl("get", f"backups.{group}", "-n", ns, "-o", "name").strip() == ""
    kubectl("delete", "crd", f"backups.{group}")

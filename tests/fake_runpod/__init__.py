"""A faithful local fake of RunPod's GraphQL API whose pods are local subprocesses."""

from tests.fake_runpod.server import NO_CAPACITY, FakePod, FakeRunPod

__all__ = ["NO_CAPACITY", "FakePod", "FakeRunPod"]

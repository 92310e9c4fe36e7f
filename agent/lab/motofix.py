"""moto server for the labs, with the Elastic IP association AWS has and moto 5.2 lacks.

moto ignores ``AssociateAddress``'s ``PrivateIpAddress``: it accepts any address (even one
the network interface does not have) and ``DescribeAddresses`` then reports the interface's
primary address and an empty ``InstanceId``. An EIP that follows a route table is bound to
a *secondary* address of the taker's interface, so the lab (its reconciler maps
associations onto the data path) and the agents (they read associations back) need what
AWS does:

* ``AssociateAddress(..., NetworkInterfaceId, PrivateIpAddress)`` binds the EIP to that
  address, which must be one of the interface's addresses (else ``InvalidParameterValue``,
  nothing changes); without ``PrivateIpAddress`` it binds to the primary, as AWS does;
* ``DescribeAddresses`` reports that address and the instance the interface is attached to.

Run as ``python -m agent.lab.motofix [moto_server arguments]``; nothing else changes.
"""

from __future__ import annotations

import sys
from typing import Any

_PATCHED = False


def _eni_addresses(eni: Any) -> list[str]:
    return [str(a.get("PrivateIpAddress")) for a in (eni.private_ip_addresses or []) if a.get("PrivateIpAddress")]


def patch() -> None:
    """Install the fix into this process's moto (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    from moto.ec2.models.elastic_ip_addresses import ElasticAddress, ElasticAddressBackend
    from moto.ec2.responses.elastic_ip_addresses import ElasticIPAddresses

    original_respond = ElasticIPAddresses.associate_address
    original_disassociate = ElasticAddressBackend.disassociate_address

    def associate_address(self: Any) -> Any:
        wanted = self._get_param("PrivateIpAddress")
        eni = None
        if "NetworkInterfaceId" in self._get_params():
            eni = self.ec2_backend.get_network_interface(self._get_param("NetworkInterfaceId"))
        elif "InstanceId" in self._get_params():
            instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))
            eni = instance.nics[0] if instance.nics else None
        if wanted and eni is not None and wanted not in _eni_addresses(eni):
            self.ec2_backend.raise_error(
                "InvalidParameterValue",
                f"The private IP address {wanted} is not assigned to network interface {eni.id}",
            )
        result = original_respond(self)
        if "AllocationId" in self._get_params():
            (eip,) = self.ec2_backend.address_by_allocation([self._get_param("AllocationId")])
        else:
            (eip,) = self.ec2_backend.address_by_ip([self._get_param("PublicIp")])
        eip.lab_private_ip = wanted or None
        return result

    def disassociate_address(self: Any, address: str | None = None, association_id: str | None = None) -> None:
        eips = self.address_by_ip([address]) if address else self.address_by_association([association_id])
        for eip in eips:
            eip.lab_private_ip = None
        original_disassociate(self, address=address, association_id=association_id)

    def private_ip_address(self: Any) -> str | None:
        if self.eni is None:
            return None
        bound: str | None = getattr(self, "lab_private_ip", None) or self.eni.private_ip_address
        return bound

    def instance_id(self: Any) -> str:
        if self.instance is not None:
            return str(self.instance.id)
        attached = getattr(self.eni, "instance", None) if self.eni is not None else None
        return str(attached.id) if attached is not None else ""

    ElasticIPAddresses.associate_address = associate_address  # type: ignore[method-assign]
    ElasticAddressBackend.disassociate_address = disassociate_address  # type: ignore[method-assign]
    ElasticAddress.private_ip_address = property(private_ip_address)  # type: ignore[assignment,method-assign]
    ElasticAddress.instance_id = property(instance_id)  # type: ignore[assignment,method-assign]
    _PATCHED = True


def main(argv: list[str] | None = None) -> None:
    patch()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()

"""moto's server, with EC2's Service Quotas and the vCPU limits they set.

moto 5.2 serves Service Quotas only for the `vpc` service and never refuses a launch for quota.
The tests need both halves of what a real account does, so this starts moto's own server after
teaching it two things, from `NODEPOOL_E2E_SERVICE_QUOTAS` (JSON such as
`{"ec2": {"L-1216C47A": 32}, "ebs": {"L-7A658B76": 50}}`):

- `ListServiceQuotas` and `GetServiceQuota` answer for the `ec2` and `ebs` codes given, shaped as
  AWS answers them (`ServiceQuotasV20190624` JSON protocol, `Quotas` pages, `NextToken`);
- `RunInstances` (and the `CreateFleet` launches moto makes through it) is refused with
  `VcpuLimitExceeded`, as EC2 refuses it, when the running and pending instances of the
  standard families (A, C, D, H, I, M, R, T, Z) would hold more vCPUs than the on-demand
  (`L-1216C47A`) or spot (`L-34B43A08`) quota given. Other codes are served, not enforced.

Everything else is moto as released; arguments go to `moto_server` unchanged.
"""

import json
import os
import re
import sys
import threading

from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.instance_types import INSTANCE_TYPES
from moto.ec2.models.instances import InstanceBackend
from moto.servicequotas.exceptions import NoSuchResource
from moto.servicequotas.models import ServiceQuotasBackend
from moto.servicequotas.responses import ServiceQuotasResponse

QUOTAS = json.loads(os.environ.get("NODEPOOL_E2E_SERVICE_QUOTAS") or "{}")
ON_DEMAND_STANDARD = "L-1216C47A"
SPOT_STANDARD = "L-34B43A08"
STANDARD_FAMILIES = set("acdhimrtz")
# Service Quotas pages of this size, so a client must follow NextToken (AWS's default is 100).
PAGE = 50


def quota(service_code, code, value, region, account):
    return {
        "Adjustable": True,
        "GlobalQuota": False,
        "QuotaArn": f"arn:aws:servicequotas:{region}:{account}:{service_code}/{code}",
        "QuotaCode": code,
        "QuotaName": code,
        "ServiceCode": service_code,
        "ServiceName": {"ec2": "Amazon Elastic Compute Cloud (Amazon EC2)",
                        "ebs": "Amazon Elastic Block Store (Amazon EBS)"}.get(service_code, service_code),
        "Unit": "None",
        "Value": float(value),
    }


def account_quotas(backend, service_code):
    given = QUOTAS.get(service_code)
    if given is None:
        raise NoSuchResource
    return [quota(service_code, code, value, backend.region_name, backend.account_id)
            for code, value in sorted(given.items())]


def list_service_quotas(self):
    params = json.loads(self.body or "{}")
    quotas = account_quotas(self.backend, str(params.get("ServiceCode")))
    start = int(params.get("NextToken") or 0)
    size = min(int(params.get("MaxResults") or PAGE), PAGE)
    page = {"Quotas": quotas[start:start + size]}
    if start + size < len(quotas):
        page["NextToken"] = str(start + size)
    return json.dumps(page)


def get_service_quota(self):
    params = json.loads(self.body or "{}")
    service_code = str(params.get("ServiceCode"))
    if service_code == "vpc":
        return original_get_service_quota(self)
    for found in account_quotas(self.backend, service_code):
        if found["QuotaCode"] == params.get("QuotaCode"):
            return json.dumps({"Quota": found})
    raise NoSuchResource


original_get_service_quota = ServiceQuotasResponse.get_service_quota
ServiceQuotasResponse.list_service_quotas = list_service_quotas
ServiceQuotasResponse.get_service_quota = get_service_quota
# The backend's own list answers for `vpc` only; ours is on the response class above.
ServiceQuotasBackend.account_quotas = account_quotas


def vcpus(instance_type):
    return INSTANCE_TYPES.get(instance_type, {}).get("VCpuInfo", {}).get("DefaultVCpus", 1)


def standard(instance_type):
    family = re.match(r"[a-z\-]+", instance_type or "")
    return family is not None and family.group(0) in STANDARD_FAMILIES


def bucket_code(spot):
    return SPOT_STANDARD if spot else ON_DEMAND_STANDARD


def held_vcpus(backend, spot):
    held = 0
    for instance in backend.all_instances():
        if instance.state not in ("pending", "running"):
            continue
        if (instance.lifecycle == "spot") != spot or not standard(instance.instance_type):
            continue
        held += vcpus(instance.instance_type)
    return held


original_run_instances = InstanceBackend.run_instances
# moto serves requests on threads; a check and the launch it admits happen as one, as in EC2.
launching = threading.Lock()


def run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
    instance_type = kwargs.get("instance_type") or "m1.small"
    spot = bool(kwargs.get("instance_market_options"))
    limit = QUOTAS.get("ec2", {}).get(bucket_code(spot))
    if limit is None or not standard(instance_type):
        return original_run_instances(self, image_id, count, user_data, security_group_names, **kwargs)
    with launching:
        wanted = held_vcpus(self, spot) + int(count) * vcpus(instance_type)
        if wanted > limit:
            raise EC2ClientError(
                "VcpuLimitExceeded",
                f"You have requested more vCPU capacity than your current vCPU limit of {int(limit)} "
                "allows for the instance bucket that the specified instance type belongs to. Please "
                "visit http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit.",
            )
        return original_run_instances(self, image_id, count, user_data, security_group_names, **kwargs)


InstanceBackend.run_instances = run_instances

if __name__ == "__main__":
    from moto.server import main

    sys.exit(main(sys.argv[1:]))

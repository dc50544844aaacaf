"""Drives a running msgcontact through the official Alibaba Cloud Python SDK.

Called by tests/sdk_conformance.rs with a JSON description of the running service. Exits non-zero
on the first failed expectation.
"""
import json
import re
import sys
import time
import urllib.request

from alibabacloud_resourcedirectorymaster20220419 import models
from alibabacloud_resourcedirectorymaster20220419.client import Client
from alibabacloud_tea_openapi import exceptions, utils_models
from alibabacloud_tea_openapi.client import Client as OpenApiClient
from alibabacloud_tea_openapi.models import Config
from darabonba.runtime import RuntimeOptions

env = json.loads(sys.argv[1])
ENDPOINT = env["endpoint"]
PHONE = "86-13912341234"
PHONE2 = "86-13800001111"
UUID = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")
checks = 0


def ok(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def config(ak, secret, **kw):
    return Config(access_key_id=ak, access_key_secret=secret, endpoint=ENDPOINT, protocol="http", **kw)


a = Client(config(env["ak"], env["secret"]))
a_v2 = Client(config(env["ak"], env["secret"], signature_algorithm="v2"))
b = Client(config(env["ak_limited"], env["secret_limited"]))


def expect_error(call, status, code, message=None):
    try:
        call()
    except exceptions.AlibabaCloudException as e:
        ok(e.status_code == status, f"{code}: status {e.status_code} != {status}")
        ok(e.code == code, f"code {e.code} != {code}")
        ok(bool(UUID.match(e.request_id or "")), f"{code}: request id {e.request_id!r}")
        if message:
            ok(message in e.message, f"{code}: message {e.message!r} lacks {message!r}")
        return e
    raise AssertionError(f"expected {code}, call succeeded")


def received_code(request_id):
    for _ in range(200):
        with urllib.request.urlopen(env["inbox"]) as r:
            for sms in json.load(r):
                if sms["request_id"] == request_id:
                    return sms["code"]
        time.sleep(0.05)
    raise AssertionError(f"no SMS for {request_id}")


generic = OpenApiClient(config(env["ak"], env["secret"]))


def extension(action, query):
    params = utils_models.Params(action=action, version="2022-04-19", protocol="HTTP", pathname="/",
                                 method="POST", auth_type="AK", style="RPC", req_body_type="formData",
                                 body_type="json")
    return generic.call_api(params, utils_models.OpenApiRequest(query=query), RuntimeOptions())["body"]


def send(client, contact_id, phone):
    return client.send_phone_verification_for_message_contact(
        models.SendPhoneVerificationForMessageContactRequest(contact_id=contact_id, phone_number=phone))


def add(client, name, phone):
    r = client.add_message_contact(models.AddMessageContactRequest(
        name=name, email_address="ops@example.com", phone_number=phone, title="TechnicalDirector",
        message_types=["ServiceMessage", "FaultMessage"]))
    return r.body.contact.contact_id


# The happy path: add → send → the provider receives the code → check → Active.
cid = add(a, "sdkalice", PHONE)
ok(cid.startswith("c-") and len(cid) == 18, f"contact id {cid}")
got = a.get_message_contact(models.GetMessageContactRequest(contact_id=cid)).body.contact
ok(got.status == "Verifying" and got.phone_number == PHONE, f"new contact {got}")
pending = a.list_message_contact_verifications(models.ListMessageContactVerificationsRequest(contact_id=cid)).body
ok(pending.total_count == 1 and pending.contact_verifications[0].target == PHONE, "pending target listed")
sent = send(a, cid, PHONE)
ok(bool(UUID.match(sent.body.request_id)), "send answers a RequestId")
code = received_code(sent.body.request_id)
ok(len(code) == 6 and code.isdigit(), "six-digit code")
wrong = "000000" if code != "000000" else "111111"
try:
    extension("CheckPhoneVerificationForMessageContact", {"ContactId": cid, "PhoneNumber": PHONE, "VerificationCode": wrong})
    raise AssertionError("a wrong code was accepted")
except exceptions.ClientException as e:
    ok(e.code == "InvalidVerificationCode" and e.status_code == 400, f"wrong code: {e.code}")
checked = extension("CheckPhoneVerificationForMessageContact", {"ContactId": cid, "PhoneNumber": PHONE, "VerificationCode": code})
ok(checked["Status"] == "Active", f"check: {checked}")
ok(a.get_message_contact(models.GetMessageContactRequest(contact_id=cid)).body.contact.status == "Active", "Active")
status = extension("GetVerificationRequest", {"RequestId": sent.body.request_id})["Request"]
ok(status["Status"] == "Sent" and status["PhoneNumber"] == "86-139****1234", f"request status {status}")

# Every error code of the seed table, received intact by the SDK.
seed = [
    (lambda: send(a, None, PHONE), 400, "MissingParameter.ContactId", "You must specify ContactId."),
    (lambda: send(a, "c-bad", PHONE), 400, "InvalidParameter.ContactId", "The ContactId is invalid."),
    (lambda: send(a, cid, None), 400, "MissingParameter.PhoneNumber", "You must specify PhoneNumber."),
    (lambda: send(a, cid, "86-12"), 400, "InvalidParameter.PhoneNumber", "The PhoneNumber is invalid."),
    (lambda: send(a, cid, "1-2015550123"), 400, "InvalidParameter.MobileCountryCode",
     "The current site does not support the country code."),
    (lambda: send(a, "c-0000000000000000", PHONE), 404, "EntityNotExists.Contact", "This Contact does not exist."),
    # The number is verified now: nothing pending to send to.
    (lambda: send(a, cid, PHONE), 404, "EntityNotExists.Contact.Verification",
     "This contact verification does not exist."),
]
for call, status_code, code_, message in seed:
    expect_error(call, status_code, code_, message)

# Daily limit (account B allows one send a day).
b1 = add(b, "sdkbob", PHONE)
b2 = add(b, "sdkcarol", PHONE2)
send(b, b1, PHONE)
expect_error(lambda: send(b, b2, PHONE2), 409, "SendValidateCodeExceedsLimitForAccount",
             "For the same account, the number of verification codes sent exceeds the limit.")

# Cooldown: a ThrottlingException with retry_after.
c2 = add(a, "sdkdave", PHONE2)
send(a, c2, PHONE2)
e = expect_error(lambda: send(a, c2, PHONE2), 429, "Throttling.Contact")
ok(isinstance(e, exceptions.ThrottlingException) and e.retry_after > 0, f"retry_after on {type(e).__name__}")

# Tenancy: B cannot see A's contact.
expect_error(lambda: b.get_message_contact(models.GetMessageContactRequest(contact_id=cid)), 404, "EntityNotExists.Contact")

# v1 signatures (signature_algorithm='v2' in the SDK) work for every kind of call.
c3 = add(a_v2, "sdkerin", PHONE)
sent_v2 = send(a_v2, c3, PHONE)
ok(bool(UUID.match(sent_v2.body.request_id)), "v1-signed send")
ok(received_code(sent_v2.body.request_id).isdigit(), "v1-signed send delivered")
expect_error(lambda: send(a_v2, "c-0000000000000000", PHONE), 404, "EntityNotExists.Contact")

# Authentication failures as the SDK reports them.
bad = Client(config(env["ak"], env["secret"] + "x"))
expect_error(lambda: bad.list_message_contacts(models.ListMessageContactsRequest()), 400, "SignatureDoesNotMatch")
bad_v2 = Client(config(env["ak"], env["secret"] + "x", signature_algorithm="v2"))
expect_error(lambda: bad_v2.list_message_contacts(models.ListMessageContactsRequest()), 400, "SignatureDoesNotMatch")
unknown = Client(config("LTAInobody", "x"))
expect_error(lambda: unknown.list_message_contacts(models.ListMessageContactsRequest()), 404, "InvalidAccessKeyId.NotFound")

# The rest of the operations through their SDK methods.
upd = a.update_message_contact(models.UpdateMessageContactRequest(contact_id=c3, name="sdkfrank", title="CEO"))
ok(bool(UUID.match(upd.body.request_id)), "update")
mem = a.associate_members(models.AssociateMembersRequest(contact_id=c3, members=["fd-1", "fd-2"])).body.members
ok(len(mem) == 2 and mem[0].contact_id == c3, "associate")
lst = a.list_message_contacts(models.ListMessageContactsRequest(member="fd-1")).body
ok(lst.total_count == 1 and lst.contacts[0].name == "sdkfrank" and lst.contacts[0].members == ["fd-1", "fd-2"], "list by member")
a.disassociate_members(models.DisassociateMembersRequest(contact_id=c3, members=["fd-2"]))
ok(a.get_message_contact(models.GetMessageContactRequest(contact_id=c3)).body.contact.members == ["fd-1"], "disassociate")
a.cancel_message_contact_update(models.CancelMessageContactUpdateRequest(contact_id=c3, phone_number=PHONE))
ok(a.get_message_contact(models.GetMessageContactRequest(contact_id=c3)).body.contact.status == "Active", "cancel")
deleted = a.delete_message_contact(models.DeleteMessageContactRequest(contact_id=c3, retain_contact_in_members=False)).body
ok(deleted.status == "Deleted", "delete")
ds = a.get_message_contact_deletion_status(models.GetMessageContactDeletionStatusRequest(contact_id=c3)).body
ok(ds.contact_deletion_status.status == "Deleted" and ds.contact_deletion_status.contact_id == c3, "deletion status")
expect_error(lambda: a.send_email_verification_for_message_contact(
    models.SendEmailVerificationForMessageContactRequest(contact_id=cid, email_address="ops@example.com")),
    400, "OperationNotSupported.EmailVerification")

print(f"SDK conformance: {checks} checks passed")

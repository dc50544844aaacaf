"""Quickstart: add a contact, send it a phone verification, read the code, verify it.

Usage: python examples/quickstart.py ACCESS_KEY_ID ACCESS_KEY_SECRET [ENDPOINT] [SMS_FILE]
"""
import json
import sys
import time

from alibabacloud_resourcedirectorymaster20220419.client import Client
from alibabacloud_resourcedirectorymaster20220419 import models
from alibabacloud_tea_openapi.models import Config
from alibabacloud_tea_openapi.client import Client as OpenApiClient
from alibabacloud_tea_openapi import utils_models
from darabonba.runtime import RuntimeOptions

ak, secret = sys.argv[1], sys.argv[2]
endpoint = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1:8080"
sms_file = sys.argv[4] if len(sys.argv) > 4 else "data/sms.jsonl"

client = Client(Config(access_key_id=ak, access_key_secret=secret, endpoint=endpoint, protocol="http"))

name = "quick" + "".join(chr(ord("a") + int(c)) for c in str(int(time.time()))[-6:])
added = client.add_message_contact(models.AddMessageContactRequest(
    name=name, email_address="ops@example.com", phone_number="86-13912341234",
    title="TechnicalDirector", message_types=["ServiceMessage", "FaultMessage"]))
contact_id = added.body.contact.contact_id
print("added", contact_id)

sent = client.send_phone_verification_for_message_contact(
    models.SendPhoneVerificationForMessageContactRequest(contact_id=contact_id, phone_number="86-13912341234"))
request_id = sent.body.request_id
print("send accepted, RequestId", request_id)

# The development `log` provider appends every SMS to a JSON-lines file.
code = None
for _ in range(100):
    try:
        with open(sms_file) as f:
            for line in f:
                sms = json.loads(line)
                if sms["request_id"] == request_id:
                    code = sms["code"]
    except FileNotFoundError:
        pass
    if code:
        break
    time.sleep(0.1)
print("code from the log provider:", code)

# CheckPhoneVerificationForMessageContact is an extension operation: call it through the generic client.
api = OpenApiClient(Config(access_key_id=ak, access_key_secret=secret, endpoint=endpoint, protocol="http"))
params = utils_models.Params(action="CheckPhoneVerificationForMessageContact", version="2022-04-19",
                             protocol="HTTP", pathname="/", method="POST", auth_type="AK", style="RPC",
                             req_body_type="formData", body_type="json")
req = utils_models.OpenApiRequest(query={"ContactId": contact_id, "PhoneNumber": "86-13912341234",
                                         "VerificationCode": code})
print("check:", api.call_api(params, req, RuntimeOptions())["body"])

got = client.get_message_contact(models.GetMessageContactRequest(contact_id=contact_id))
print("status:", got.body.contact.status)

"""The open client CA: every daemon's client certificate is issued by it, and its private key is public.

gRPC Python can only check a client certificate against root certificates; it cannot accept an unknown one
and leave the decision to the server (grpc/grpc#16547). Every daemon therefore trusts this CA for client
certificates, so the TLS handshake proves only that the caller holds the key of the certificate it presents.
Trust is decided afterwards, in the peer server, by the SHA-256 of that certificate against the paired table.
Nothing is trusted because this CA signed it; that is why its key can be published here.
"""

OPEN_CA_CERT = b"""-----BEGIN CERTIFICATE-----
MIIBgjCCASmgAwIBAgIBATAKBggqhkjOPQQDAjA2MTQwMgYDVQQDDCttaWdyYXRl
ZCBvcGVuIGNsaWVudCBDQSAoaXRzIGtleSBpcyBwdWJsaWMpMCAXDTI2MDEwMTAw
MDAwMFoYDzIyMjUxMTE0MDAwMDAwWjA2MTQwMgYDVQQDDCttaWdyYXRlZCBvcGVu
IGNsaWVudCBDQSAoaXRzIGtleSBpcyBwdWJsaWMpMFkwEwYHKoZIzj0CAQYIKoZI
zj0DAQcDQgAE9nDs9lsxFSkJoXq4SafvBDtuq6hoYFv2kRRVlvjOV8YnWqDJTbhI
JhSy7CBSeYx4zRcFJmZsCt07KDBQwYnw/qMmMCQwEgYDVR0TAQH/BAgwBgEB/wIB
ADAOBgNVHQ8BAf8EBAMCAgQwCgYIKoZIzj0EAwIDRwAwRAIgImxCE7L+F1Bp3Sq9
B1kP1Is6KND3TYbpsu+cw/OEhdYCID3XR3iR8iVFHF56Fnk5JWjiNK6hqFl95EE2
Z8CRVoEz
-----END CERTIFICATE-----
"""

OPEN_CA_KEY = b"""-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgQuuhPz3KtOwhoOkt
tYmeUr3WeW2s+gaYa0s0NQDZvpChRANCAAT2cOz2WzEVKQmherhJp+8EO26rqGhg
W/aRFFWW+M5XxidaoMlNuEgmFLLsIFJ5jHjNFwUmZmwK3TsoMFDBifD+
-----END PRIVATE KEY-----
"""

"""Redaction: the catalogue of credential forms, texts that must stay as they are, linear
time on hostile text, user patterns, and the logging filter on a real logger."""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable, Iterator

import pytest

import jobpulse
from jobpulse import InvalidJobError, RedactingFilter, _redaction, add_redaction_pattern, redact
from jobpulse._redaction import escape_unsafe_chars, is_secret_key

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM_BODY = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\nVTLw7onLRnrq0"

# (text, parts that must be gone, parts that must stay)
CATALOGUE: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    # AWS
    ("boto3: AKIAIOSFODNN7EXAMPLE denied", ("IOSFODNN7EXAMPLE",), ("boto3: AKIA", "denied")),
    ("temporary ASIAY34FZKBOKMUTVV7A expired", ("Y34FZKBOKMUTVV7A",), ("ASIA", "expired")),
    (
        "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY region=eu",
        ("wJalrXUtnFEMI", "EXAMPLEKEY"),
        ("aws_secret_access_key=", "region=eu"),
    ),
    (
        "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240101"
        "&X-Amz-Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024"
        "&X-Amz-Security-Token=FQoGZXIvYXdzEJr",
        ("IOSFODNN7EXAMPLE", "fe5f80f77d5fa3be", "FQoGZXIvYXdzEJr"),
        ("https://b.s3.amazonaws.com/k?X-Amz-Credential=", "&X-Amz-Signature="),
    ),
    # JWT
    (f"token rejected: {JWT} (expired)", ("eyJzdWIi", "SflKxwRJ"), ("rejected:", "(expired)")),
    (f"Authorization: Bearer {JWT}", ("eyJhbGci", "SflKxwRJ"), ("Authorization: Bearer ",)),
    # GitHub
    (
        "git push: ghp_16C7e42F292c6912E7710c838347Ae178B4a denied",
        ("16C7e42F292c6912E7710c838347Ae178B4a",),
        ("git push: ghp_", "denied"),
    ),
    ("oauth gho_16C7e42F292c6912E7710c838347Ae178B4a", ("16C7e42F292c",), ("gho_",)),
    ("user ghu_16C7e42F292c6912E7710c838347Ae178B4a", ("16C7e42F292c",), ("ghu_",)),
    ("app ghs_16C7e42F292c6912E7710c838347Ae178B4a", ("16C7e42F292c",), ("ghs_",)),
    ("refresh ghr_16C7e42F292c6912E7710c838347Ae178B4a", ("16C7e42F292c",), ("ghr_",)),
    (
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV01 bad",
        ("11ABCDEFG0123456789", "abcdefghijklmnop"),
        ("github_pat_", " bad"),
    ),
    (
        "https://x-access-token:ghs_16C7e42F292c6912E7710c838347Ae178B4a@github.com/o/r.git",
        ("16C7e42F292c",),
        ("https://x-access-token:", "@github.com/o/r.git"),
    ),
    # GitLab, OpenAI, npm, PyPI, SendGrid
    ("glpat-xYz0123456789abcdefGHIJ rejected", ("xYz0123456789abcdefGHIJ",), ("glpat-",)),
    (
        "openai: sk-proj-abcdefghijklmnopqrstuvwxyz0123456789 invalid",
        ("abcdefghijklmnopqrstuvwxyz0123456789",),
        ("openai: sk-proj-", "invalid"),
    ),
    ("npm_abcdefghijklmnopqrstuvwxyz0123456789 401", ("abcdefghijklmnopqrst",), ("npm_", "401")),
    (
        "pypi-AgEIcHlwaS5vcmcCJGE2YjZlZjQ2LWE2ZjItNDY1My04ZmMx upload failed",
        ("AgEIcHlwaS5vcmcCJGE2YjZlZjQ2",),
        ("pypi-", "upload failed"),
    ),
    (
        "SG.abcdefghijklmnopqrstuv.ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefg forbidden",
        ("abcdefghijklmnopqrstuv", "ABCDEFGHIJKLMNOP"),
        ("SG.", "forbidden"),
    ),
    # Slack, Discord
    (
        "slack: xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx invalid_auth",
        ("AbCdEfGhIjKlMnOpQrStUvWx", "1234567890123"),
        ("slack: xoxb-", "invalid_auth"),
    ),
    ("xoxp-123456789012-123456789012-abcdef0123456789", ("abcdef0123456789",), ("xoxp-",)),
    ("socket xapp-1-A0123456789-0123456789-abcdef0123", ("abcdef0123",), ("socket xapp-",)),
    (
        "POST https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX 404",
        ("T00000000", "XXXXXXXXXXXXXXXXXXXXXXXX"),
        ("POST https://hooks.slack.com/services/", " 404"),
    ),
    (
        "https://discord.com/api/webhooks/123456789012345678/abcDEF-ghi_JKL returned 401",
        ("123456789012345678", "abcDEF-ghi_JKL"),
        ("https://discord.com/api/webhooks/", "returned 401"),
    ),
    # Stripe, Google
    (
        "stripe: sk_live_4eC39HqLyjWDarjtT1zdp7dc declined",
        ("4eC39HqLyjWDarjtT1zdp7dc",),
        ("sk_live_", "declined"),
    ),
    ("rk_live_51H8abcdefghijklmnop restricted", ("51H8abcdefghijklmnop",), ("rk_live_",)),
    ("sk_test_4eC39HqLyjWDarjtT1zdp7dc", ("4eC39HqLyjWDarjtT1zdp7dc",), ("sk_test_",)),
    ("webhook whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw bad", ("MfKQ9r8GKYqrTwjUPD8IL",), ("whsec_",)),
    (
        "maps: AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe over quota",
        ("SyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",),
        ("maps: AIza", "over quota"),
    ),
    # PEM private keys
    (
        f"bad key:\n-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----\nok",
        ("MIIEowIBAAKCAQEA", "VTLw7onLRnrq0"),
        ("-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----", "\nok"),
    ),
    (
        f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----",
        ("MIIEowIBAAKCAQEA",),
        ("-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----"),
    ),
    (
        f"-----BEGIN OPENSSH PRIVATE KEY-----\n{PEM_BODY}\n-----END OPENSSH PRIVATE KEY-----",
        ("MIIEowIBAAKCAQEA",),
        ("-----BEGIN OPENSSH PRIVATE KEY-----",),
    ),
    (
        "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,"
        f"0A1B\n\n{PEM_BODY}\n-----END EC PRIVATE KEY-----",
        ("MIIEowIBAAKCAQEA", "DEK-Info"),
        ("-----BEGIN EC PRIVATE KEY-----", "-----END EC PRIVATE KEY-----"),
    ),
    (
        f"truncated: -----BEGIN ENCRYPTED PRIVATE KEY-----\n{PEM_BODY}",
        ("MIIEowIBAAKCAQEA", "VTLw7onLRnrq0"),
        ("truncated: -----BEGIN ENCRYPTED PRIVATE KEY-----",),
    ),
    (
        r"ValueError('-----BEGIN PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END PRIVATE KEY-----')",
        ("MIIEowIBAAKCAQEA",),
        ("ValueError('-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----')"),
    ),
    # Authorization headers, any scheme
    ("Authorization: Token abc123def456", ("abc123def456",), ("Authorization: Token ",)),
    ("authorization: Basic dXNlcjpwYXNz", ("dXNlcjpwYXNz",), ("authorization: Basic ",)),
    ("Authorization: ApiKey k-9f8e7d6c", ("k-9f8e7d6c",), ("Authorization: ApiKey ",)),
    ("Proxy-Authorization: Bearer s3cr3t.t0ken", ("s3cr3t.t0ken",), ("Proxy-Authorization",)),
    (
        'Authorization: Digest username="bob", nonce="dcd98b", '
        'response="6629fae49393a05397450978507c4ef1"',
        ("6629fae49393a05397450978507c4ef1", "dcd98b"),
        ("Authorization: Digest ",),
    ),
    (
        "Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam, "
        "SignedHeaders=host, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06",
        ("AKIDEXAMPLE", "5d672d79c15b"),
        ("Authorization: AWS4-HMAC-SHA256 ",),
    ),
    (
        "{'headers': {'Authorization': 'Bearer abc.def', 'Accept': 'json'}}",
        ("abc.def",),
        ("'Authorization': '", "'Accept': 'json'"),
    ),
    ("calling with bearer 4f9a8b7c6d5e and retry", ("4f9a8b7c6d5e",), ("bearer ", "and retry")),
    ("header basic dXNlcjpwYXNz", ("dXNlcjpwYXNz",), ("header basic ",)),
    # key = value, by the key's name
    ("passwd = hunter2", ("hunter2",), ("passwd = ",)),
    ('password="my secret pass" user=bob', ("my secret pass", "secret pass"), ("user=bob",)),
    ("password='it is long', retries=3", ("it is long",), ("password='", "retries=3")),
    ("DB_PASS=hunter2 DB_HOST=db.internal", ("hunter2",), ("DB_PASS=", "DB_HOST=db.internal")),
    ("dbPassword: hunter2", ("hunter2",), ("dbPassword: ",)),
    ("--password=hunter2 --verbose", ("hunter2",), ("--password=", "--verbose")),
    ("PGPASSWORD=hunter2 psql -h db", ("hunter2",), ("PGPASSWORD=", "psql -h db")),
    ("X-Api-Key: abc123xyz", ("abc123xyz",), ("X-Api-Key: ",)),
    ("apiKey=abc123xyz&page=2", ("abc123xyz",), ("apiKey=", "&page=2")),
    ("APIKEY=abc123xyz", ("abc123xyz",), ("APIKEY=",)),
    ("client_secret=cs_abc123 client_id=app", ("cs_abc123",), ("client_id=app",)),
    (
        "access_token=at.abc&refresh_token=rt-def&scope=read",
        ("at.abc", "rt-def"),
        ("access_token=", "refresh_token=", "scope=read"),
    ),
    ('{"password": "hunter2", "user": "bob"}', ("hunter2",), ('{"password": "', '"user": "bob"')),
    ("{'api_key': 'abc123', 'n': 1}", ("abc123",), ("{'api_key': '", "'n': 1}")),
    (r'"{\"token\": \"abc123\", \"n\": 1}"', ("abc123",), (r"\"token\": ", r"\"n\": 1")),
    ("PRIVATE_KEY=MIIabc123", ("MIIabc123",), ("PRIVATE_KEY=",)),
    ("session_id=5f2b9c sessionid=9a8b7c", ("5f2b9c", "9a8b7c"), ("session_id=", "sessionid=")),
    ("Cookie: sessionid=abc123; csrftoken=def456", ("abc123", "def456"), ("Cookie: ",)),
    ("dsn=postgres://app:pw@db/prod", ("pw@db", "prod"), ("dsn=",)),
    ("signature=5d672d79c15b&sig=abc%2Bdef", ("5d672d79c15b", "abc%2Bdef"), ("signature=",)),
    ("SECRET_KEY=django-insecure-abc123", ("django-insecure-abc123",), ("SECRET_KEY=",)),
    (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=abc123+def==;"
        "EndpointSuffix=core.windows.net",
        ("abc123+def==",),
        ("AccountName=acct", "EndpointSuffix=core.windows.net"),
    ),
    ("credentials: alice:s3cret for bob", ("alice", "s3cret"), ("credentials: ", "for bob")),
    ("ValueError: bad password: hunter2", ("hunter2",), ("ValueError: bad password: ",)),
    ("auth.TokenExpiredError: token=abc", ("abc",), ("auth.TokenExpiredError: token=",)),
    ("TokenExpired: abc", ("abc",), ("TokenExpired: ",)),
    # URLs
    ("postgres://app:s3cr3t@db:5432/x", ("s3cr3t",), ("postgres://app:", "@db:5432/x")),
    ("postgres://u:pa/ss@host/db failed", ("pa/ss", "ss@"), ("postgres://u:", "@host/db failed")),
    ("redis://:hunter2@cache:6379/0", ("hunter2",), ("redis://:", "@cache:6379/0")),
    # URL parsers (urlsplit, redis-py) take the last "@" before the path: the rest is the
    # password's.
    ("redis://u:p@ss@cache:6379/0", ("p@ss", "ss@"), ("redis://u:", "@cache:6379/0")),
    ("redis://u:pw@cache/0 mail bob@example.com", ("pw",), ("@cache/0 mail bob@example.com",)),
    ("mongodb+srv://u:p%40ss@cluster0.example.net", ("p%40ss",), ("mongodb+srv://u:",)),
    (
        "ConnectionError: GET https://0f9e8d7c6b5a49382716abcd@rpc.example.com/ failed",
        ("0f9e8d7c6b5a49382716abcd",),
        ("GET https://", "@rpc.example.com/ failed"),
    ),
    ("mysql://root:topsecret@db refused", ("topsecret",), ("mysql://root:", "@db refused")),
    (
        "401 Client Error: Unauthorized for url: "
        "https://api.example.com/v1/items?api_key=AbC123sEcReT&page=2",
        ("AbC123sEcReT",),
        (
            "401 Client Error: Unauthorized for url: https://api.example.com/v1/items?api_key=",
            "&page=2",
        ),
    ),
    (
        "redirect url=https://app.example.com/cb?code=1&token=tok-abc#state",
        ("tok-abc",),
        ("redirect url=https://app.example.com/cb?code=1&token=",),
    ),
    ("GET /x?access_token=abc.def&page=2", ("abc.def",), ("GET /x?access_token=", "&page=2")),
    (
        "https://app.example.com/cb#access_token=abc123&token_type=bearer",
        ("abc123",),
        ("#access_token=", "token_type=bearer"),
    ),
]

# Texts without credentials: they come out as they went in.
UNCHANGED = [
    "connection refused by db.internal:5432",
    "passenger=3 seats=12",
    "tokenizer failed",
    "tokenizer=bert failed to load",
    "max_tokens=4096 tokens_used=12",
    "token_count=12 token_type=bearer",
    "bypass=true compass=north author=bob",
    "session expired, please log in again",
    "job 123e4567-e89b-12d3-a456-426614174000 failed",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8 not found",
    "sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "/home/app/secrets/token.json not found",
    "FileNotFoundError: [Errno 2] No such file or directory: '/run/secrets/db_password'",
    'File "/app/auth/token.py", line 12, in refresh',
    "tests/auth/token.py:12: in refresh",
    r"C:\Users\app\secret.txt is locked",
    "InvalidPasswordError: user not found",
    "PasswordError: cannot reach db",
    "KeyError: 'password'",
    "https://example.com/path?page=2&sort=asc",
    "http://host:8080/users/@alice",
    "Basic authentication required",
    "bearer token expired",
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    "eyJhbGciOiJIUzI1NiJ9 is a header alone",
    "sk_live_ alone",
    "mail bob@example.com about it",
    "ssh://git@github.com/org/repo.git",
    "ratio: 0.5, rows: 1200, time=2024-01-01T00:00:00Z",
    "ValueError: invalid literal for int() with base 10: 'abc'",
    "password == expected failed",
    "secret_name=prod-db auth_user=bob",
    "",
]


@pytest.mark.parametrize(("text", "gone", "kept"), CATALOGUE)
def test_catalogue(text: str, gone: tuple[str, ...], kept: tuple[str, ...]) -> None:
    redacted = redact(text)
    assert "***" in redacted
    for secret in gone:
        assert secret not in redacted, redacted
    for context in kept:
        assert context in redacted, redacted
    assert redact(redacted) == redacted  # idempotent


def test_catalogue_covers_forty_forms() -> None:
    assert len(CATALOGUE) >= 40


@pytest.mark.parametrize("text", UNCHANGED)
def test_texts_without_credentials_are_unchanged(text: str) -> None:
    assert redact(text) is text


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("passwd", True),
        ("DB_PASS", True),
        ("dbPassword", True),
        ("X-Api-Key", True),
        ("APIKey", True),
        ("apikey", True),
        ("api_key", True),
        ("private_key", True),
        ("clientSecret", True),
        ("access_token", True),
        ("authorization", True),
        ("cookie", True),
        ("session", True),
        ("session_id", True),
        ("dsn", True),
        ("credentials", True),
        ("pwd", True),
        ("sig", True),
        ("xsrftoken", True),
        ("AccountKey", True),
        ("passenger", False),
        ("bypass", False),
        ("compass", False),
        ("tokenizer", False),
        ("max_tokens", False),
        ("token_count", False),
        ("author", False),
        ("signal", False),
        ("key", False),
        ("InvalidPasswordError", False),
        ("token.py", False),
    ],
)
def test_secret_keys_by_segments(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_escape_unsafe_chars() -> None:
    clean = "tab\tnewline\ncr\r é € 😀"
    assert escape_unsafe_chars(clean) is clean
    assert escape_unsafe_chars("a\udcffb\x00c\x1b[31md\x7f\x85") == (
        "a\\udcffb\\x00c\\x1b[31md\\x7f\\x85"
    )
    escaped = escape_unsafe_chars("".join(map(chr, range(0x20))) + "\ud800\udfff")
    escaped.encode()  # valid UTF-8
    assert escaped.count("\t") == escaped.count("\n") == escaped.count("\r") == 1
    assert escaped.count("\\") == 31
    assert escape_unsafe_chars(escaped) == escaped


# -- linear time ------------------------------------------------------------------------

HOSTILE: list[tuple[str, Callable[[int], str]]] = [
    ("word run", lambda n: "v" * n),
    ("word run then =", lambda n: "v" * n + "="),
    ("a=", lambda n: "a=" * (n // 2)),
    ("a:", lambda n: "a:" * (n // 2)),
    ("password=", lambda n: "password=" * (n // 9)),
    ("token: '", lambda n: "token: '" * (n // 8)),
    ("spaces before =", lambda n: "password" + " " * n + "x"),
    ("://", lambda n: "://" * (n // 3)),
    ("a://", lambda n: "a://" * (n // 4)),
    ("x:// a:", lambda n: "x://" + "a:" * (n // 2)),
    ("u:p without @", lambda n: "s://u:" + "p" * n),
    ("u:p@p@...", lambda n: "s://u:" + "p@" * (n // 2)),
    ("u:@p@p... then a path", lambda n: "s://u:" + "@p" * (n // 2) + "/x"),
    ("user info without @", lambda n: "s://" + "u" * n),
    ("eyJ", lambda n: "eyJ" * (n // 3)),
    ("eyJ.", lambda n: "eyJaaaaaaaa." * (n // 12)),
    ("-----BEGIN", lambda n: "-----BEGIN" * (n // 10)),
    ("BEGIN KEY without END", lambda n: "-----BEGIN PRIVATE KEY-----" * (n // 27)),
    ("BEGIN label", lambda n: "-----BEGIN " + "A" * n),
    ("dashes", lambda n: "-" * n),
    ("open double quote", lambda n: 'password="' + "a" * n),
    ("open single quotes", lambda n: "secret='" * (n // 8)),
    ("escaped quotes", lambda n: 'token=\\"' + "a\\" * (n // 2)),
    ("AKIA", lambda n: "AKIA" * (n // 4)),
    ("ghp_", lambda n: "ghp_" * (n // 4)),
    ("xoxb-", lambda n: "xoxb-" * (n // 5)),
    ("slack hooks", lambda n: "hooks.slack.com/services/" * (n // 25)),
    ("bearer", lambda n: "bearer " * (n // 7)),
    ("Authorization:", lambda n: "Authorization: " * (n // 15)),
    ("Authorization params", lambda n: "Authorization: Digest a=" * (n // 24)),
    ("@", lambda n: "@" * n),
    ("uppercase", lambda n: "A" * n),
]


def _growth(function: Callable[[str], object], make: Callable[[int], str], size: int) -> float:
    """How many times longer `function` takes on 8x the text, best of 5 runs each."""

    def best(text: str) -> float:
        fastest = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            function(text)
            fastest = min(fastest, time.perf_counter() - started)
        return max(fastest, 1e-7)

    return best(make(8 * size)) / best(make(size))


# Linear: 8x the text, 8x the time; quadratic: 64x. The best of 5 runs stays near the truth
# on a loaded machine; 24 leaves room for noise and still catches quadratic.
MAX_GROWTH = 24


@pytest.mark.parametrize(("name", "make"), HOSTILE, ids=[name for name, _ in HOSTILE])
def test_redaction_is_linear_on_hostile_text(name: str, make: Callable[[int], str]) -> None:
    growth = _growth(redact, make, 2_500)
    assert growth < MAX_GROWTH, f"{name}: {growth:.1f}x the time for 8x the text"


def test_the_linearity_check_catches_a_quadratic_pattern() -> None:
    # Without the lookbehind every position of a word run starts a scan to its end.
    quadratic = re.compile(r"[a-z]+=")
    assert _growth(quadratic.search, lambda n: "v" * n, 1_000) > MAX_GROWTH


# -- user patterns ------------------------------------------------------------------------


@pytest.fixture
def user_patterns() -> Iterator[None]:
    """No user patterns during the test (docs examples may have added some), the same ones
    after it."""
    saved, _redaction._user_patterns = _redaction._user_patterns, ()
    yield
    _redaction._user_patterns = saved


@pytest.mark.usefixtures("user_patterns")
def test_add_redaction_pattern_whole_match_and_secret_group() -> None:
    text = "order ACME-123456 for customer-key k_9f8e7d"
    assert redact(text) == text
    add_redaction_pattern(r"ACME-\d+")
    add_redaction_pattern(re.compile(r"customer-key (?P<secret>\w+)"))
    assert redact(text) == "order *** for customer-key ***"
    assert jobpulse.redact(text) == "order *** for customer-key ***"


@pytest.mark.usefixtures("user_patterns")
def test_user_patterns_apply_to_last_error_and_metadata(monitor: jobpulse.JobMonitor) -> None:
    add_redaction_pattern(r"ACME-\d+")

    @monitor.job("orders")
    def orders() -> None:
        jobpulse.set_metadata(order="ACME-42 shipped")
        raise RuntimeError("order ACME-123456 failed")

    with pytest.raises(RuntimeError):
        orders()
    status = monitor.status("orders")
    assert status is not None
    assert status.last_error == "RuntimeError: order *** failed"
    assert status.metadata == {"order": "*** shipped"}


@pytest.mark.usefixtures("user_patterns")
def test_a_secret_group_that_did_not_take_part_leaves_the_match() -> None:
    add_redaction_pattern(r"(?:order=(?P<secret>\d+)|ORDER-X)")
    assert redact("order=123 and ORDER-X") == "order=*** and ORDER-X"


@pytest.mark.parametrize(
    "pattern",
    ["(unclosed", "a*", "", re.compile(rb"bytes"), 42, None],
)
@pytest.mark.usefixtures("user_patterns")
def test_bad_redaction_patterns_are_refused_at_once(pattern: object) -> None:
    with pytest.raises(InvalidJobError):
        add_redaction_pattern(pattern)  # type: ignore[arg-type]
    assert _redaction._user_patterns == ()


# -- the logging filter ---------------------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, list[logging.LogRecord]]]:
    """A real logger with a real StreamHandler (and a spy on the records it emitted)."""
    logger = logging.getLogger("tests.redaction.app")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    records: list[logging.LogRecord] = []

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    spy = Spy()
    redacting = RedactingFilter()
    logger.addFilter(redacting)
    logger.addHandler(handler)
    logger.addHandler(spy)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        yield logger, stream, records
    finally:
        logger.removeFilter(redacting)
        logger.removeHandler(handler)
        logger.removeHandler(spy)
        logger.propagate = True


def test_filter_redacts_message_exception_and_stack(
    captured: tuple[logging.Logger, io.StringIO, list[logging.LogRecord]],
) -> None:
    logger, stream, records = captured
    error = ConnectionError("cannot reach postgres://app:hunter2@db/x")
    token = "tok-" + "123"  # the stack shows this line: the token itself is not on it
    try:
        raise error
    except ConnectionError:
        logger.exception("sync with token=%s failed", token, stack_info=True)
    output = stream.getvalue()
    assert "hunter2" not in output
    assert "tok-123" not in output
    assert "ERROR sync with token=*** failed" in output
    assert "ConnectionError: cannot reach postgres://app:***@db/x" in output
    assert "Traceback (most recent call last)" in output
    assert "Stack (most recent call last)" in output
    (record,) = records
    assert record.exc_info is not None
    assert record.exc_info[1] is error  # kept for handlers that read the exception
    assert record.args is None


def test_filter_leaves_clean_and_malformed_records_alone(
    captured: tuple[logging.Logger, io.StringIO, list[logging.LogRecord]],
) -> None:
    logger, _, records = captured
    logger.info("ran %s in %d ms", "job", 12)
    clean = records[-1]
    assert (clean.msg, clean.args) == ("ran %s in %d ms", ("job", 12))
    malformed = logging.LogRecord("x", logging.INFO, __file__, 1, "ran %s %s", ("job",), None)
    assert RedactingFilter().filter(malformed) is True
    assert (malformed.msg, malformed.args) == ("ran %s %s", ("job",))
    weird = logging.LogRecord("x", logging.INFO, __file__, 1, "x", None, None)
    weird.exc_info = "not a tuple"  # type: ignore[assignment]
    assert RedactingFilter().filter(weird) is True


def test_filter_redacts_an_exception_text_cached_by_an_earlier_handler() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, None)
    record.exc_text = "Traceback...\nValueError: password=hunter2"
    RedactingFilter().filter(record)
    assert record.exc_text == "Traceback...\nValueError: password=***"


def test_jobpulse_logger_redacts_what_it_logs() -> None:
    jobpulse_logger = logging.getLogger("jobpulse")
    assert any(isinstance(f, RedactingFilter) for f in jobpulse_logger.filters)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    jobpulse_logger.addHandler(handler)
    try:
        try:
            raise ValueError("dsn=postgres://u:hunter2@db")
        except ValueError:
            token = "ghp_16C7e42F292c6912E7710c838347Ae"
            jobpulse_logger.error("internal error at %s", token, exc_info=True)
    finally:
        jobpulse_logger.removeHandler(handler)
    output = stream.getvalue()
    assert "hunter2" not in output
    assert "16C7e42F" not in output
    assert "ValueError: dsn=***" in output

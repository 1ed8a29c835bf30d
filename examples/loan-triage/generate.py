"""Deterministic generator of the loan-triage example: synthetic customer messages to a retail bank.

    python examples/loan-triage/generate.py --out examples/loan-triage/data \
        --inputs examples/loan-triage/inputs.jsonl                                    # the shipped files
    python examples/loan-triage/generate.py --out /tmp/small --train 60 --eval 20 --probes 8

Five labels (``LABELS``): a loan application, a fraud report, a complaint, an account change, a hardship
request. Each message is assembled from a greeting, one of several templates of its label with slots (amounts,
products, merchants, cities, dates, channels), an optional sentence about the customer (a name, a gender, an age
or a nationality: the protected attributes), an optional closing, and mild noise (lower case, a dropped
greeting, a typo). Some templates borrow words of another label (a complaint about a loan fee, a hardship
request about card payments), so the task is not keyword matching.

Files written (JSON Lines, UTF-8, ``\\n`` line ends, keys sorted):

* ``train.jsonl``, ``eval.jsonl`` — ``{"id", "label", "text"}``; eval messages are drawn from the same
  distribution with a different stream, and any eval text that also occurs in train (ignoring case and spacing) is
  redrawn;
* ``probes.jsonl`` — fairness probes ``{"attribute", "id", "variants": [text, ...]}``: the same message with only
  the protected attribute changed; a classifier passes a probe when every variant gets the same label;
* ``--inputs FILE`` — ``{"id", "text"}`` requests (a separate stream) for the demo's ``kolm-audit run``.

Randomness is a counter-based SHA-256 stream keyed by ``(seed, stream, counter)`` — no library RNG — so every
Python version on every machine writes the same bytes; the recipe pins their sha256 digests.

Example::

    >>> d = generate(seed=7, n_train=10, n_eval=4, n_probes=2)
    >>> [len(d[k]) for k in ("train", "eval", "probes")], sorted(d["train"][0])
    ([10, 4, 2], ['id', 'label', 'text'])
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

LABELS = ("loan_application", "fraud_report", "complaint", "account_change", "hardship_request")
SEED = 20260101

_AMOUNTS = ("2,500", "5,000", "8,000", "12,000", "15,000", "20,000", "25,000", "40,000", "75,000", "180,000",
            "250,000", "320,000", "900", "1,200", "3,400")
_CURRENCIES = ("EUR", "GBP", "USD", "euros", "pounds", "dollars")
_LOANS = ("a personal loan", "a mortgage", "a car loan", "a home improvement loan", "a student loan",
          "a small business loan", "a bridging loan", "a credit line", "a loan to consolidate my debts",
          "financing for a used van")
_PURPOSES = ("to renovate the kitchen", "to buy a car", "to pay for my daughter's tuition", "to expand my bakery",
             "to buy our first apartment", "to consolidate two credit cards", "to cover a roof repair",
             "to buy equipment for my workshop", "for a wedding", "to refinance my current mortgage")
_MERCHANTS = ("an online electronics shop", "a petrol station", "a hotel in Lisbon", "a supermarket",
              "an airline", "a streaming service", "a jewellery store", "a gaming website", "a pharmacy",
              "a furniture store")
_CARDS = ("debit card", "credit card", "business card", "contactless card", "virtual card")
_CITIES = ("Lyon", "Madrid", "Leeds", "Rotterdam", "Munich", "Porto", "Dublin", "Milan", "Krakow", "Ghent")
_DAYS = ("yesterday", "last night", "on Monday", "this morning", "two days ago", "over the weekend",
         "on the 3rd", "last week", "on Friday evening", "earlier today")
_CHANNELS = ("the app", "online banking", "the branch", "the phone line", "the chat", "email")
_FIELDS = ("my address", "my phone number", "my email address", "my surname after marriage",
           "the account holder name", "my registered mobile", "the beneficiary on my savings account",
           "my postal address", "my tax residency", "the joint account holders")
_HARDSHIP_CAUSES = ("I lost my job last month", "my hours were cut in half", "I have been ill since spring",
                    "my partner passed away", "my business closed", "I am on unpaid parental leave",
                    "our rent went up sharply", "I was made redundant", "a flood damaged our home",
                    "my pension has not been paid yet")
_HARDSHIP_ASKS = ("a payment holiday", "a lower monthly payment", "more time to pay", "a temporary freeze of "
                  "interest", "a repayment plan", "to pause my mortgage payments for three months",
                  "to extend the loan term", "a break from the card minimum payments")
_COMPLAINT_TOPICS = ("the fee charged on my account", "the interest rate on my loan", "your customer service",
                     "the waiting time at the branch", "the app crashing every time I log in",
                     "a transfer that took nine days", "the closure of my local branch",
                     "the letter I received about my mortgage", "being put on hold for an hour",
                     "an overdraft charge I was never told about")
_ACCOUNT_CHANGES = ("update", "change", "correct", "replace")
_PRODUCTS = ("my current account", "my savings account", "my card", "my online banking profile",
             "my joint account", "my business account")

# the protected attributes of the fairness probes, each with interchangeable phrasings
_PERSONAS: dict[str, tuple[str, ...]] = {
    "name": ("My name is Maria Garcia.", "My name is John Smith.", "My name is Aisha Okafor.",
             "My name is Wei Zhang.", "My name is Olena Kovalenko.", "My name is Mohammed Haddad."),
    "gender": ("I am a woman.", "I am a man.", "I am a non-binary person."),
    "age": ("I am 23 years old.", "I am 45 years old.", "I am 71 years old."),
    "nationality": ("I am a French citizen.", "I am a Nigerian citizen.", "I am a Polish citizen.",
                    "I am a Brazilian citizen.", "I am an Indian citizen."),
}
_GREETINGS = ("Hello,", "Hi,", "Dear bank,", "Good morning,", "Hi there,", "To whom it may concern,", "Hello team,")
_CLOSINGS = ("Thanks.", "Thank you in advance.", "Kind regards.", "Please get back to me soon.", "Best wishes.",
             "Regards.", "Many thanks.")


class _Stream:
    """Counter-based draws: ``below(n)`` = (first 8 bytes of SHA-256(seed|stream|counter), big-endian) · n >> 64."""

    def __init__(self, seed: int, stream: str) -> None:
        self._prefix = f"kolm-example/loan-triage|{seed}|{stream}|".encode()
        self._counter = 0

    def below(self, n: int) -> int:
        digest = hashlib.sha256(self._prefix + str(self._counter).encode()).digest()
        self._counter += 1
        return (int.from_bytes(digest[:8], "big") * n) >> 64

    def pick(self, options: tuple[str, ...]) -> str:
        return options[self.below(len(options))]

    def chance(self, percent: int) -> bool:
        return self.below(100) < percent


def _loan(r: _Stream) -> str:
    amount, cur = r.pick(_AMOUNTS), r.pick(_CURRENCIES)
    return r.pick((
        f"I would like to apply for {r.pick(_LOANS)} of {amount} {cur} {r.pick(_PURPOSES)}.",
        f"Can I borrow {amount} {cur} {r.pick(_PURPOSES)}? What documents do you need?",
        f"I want to request {r.pick(_LOANS)}. My salary is paid into my account with you every month.",
        f"We are looking for {r.pick(_LOANS)} {r.pick(_PURPOSES)} and would like to know if we qualify.",
        f"Please send me an application form for {r.pick(_LOANS)}, around {amount} {cur}.",
        f"Is it possible to get a quote for {r.pick(_LOANS)} over five years for {amount} {cur}?",
        f"I started the loan application in {r.pick(_CHANNELS)} but could not upload my payslips; "
        f"I still want to apply for {amount} {cur}.",
        f"I already have a mortgage with you and would like to borrow another {amount} {cur} {r.pick(_PURPOSES)}.",
        f"After I changed {r.pick(_FIELDS)} last year I was told to wait; can I now apply for {r.pick(_LOANS)}?",
        f"My finances are back on track after a hard year, so I would like to apply for {r.pick(_LOANS)}.",
    ))


def _fraud(r: _Stream) -> str:
    card, merchant, day = r.pick(_CARDS), r.pick(_MERCHANTS), r.pick(_DAYS)
    amount, cur = r.pick(_AMOUNTS), r.pick(_CURRENCIES)
    return r.pick((
        f"There is a payment of {amount} {cur} to {merchant} on my {card} that I did not make.",
        f"Someone used my {card} {day} at {merchant} in {r.pick(_CITIES)}. I have never been there.",
        "I got a text asking for my PIN and I think I replied. Now I see transfers I do not recognise.",
        f"My {card} was stolen {day} and there are already charges on it. Please block it.",
        "A caller claiming to be from your fraud team asked me to move my savings. Was that really you?",
        f"I see three withdrawals {day} from a cash machine in {r.pick(_CITIES)} while my card is in my wallet.",
        f"Unknown direct debit to {merchant} appeared on my statement, I never signed up for it.",
        f"I think my online banking login was stolen: someone changed {r.pick(_FIELDS)} and made a transfer.",
        f"I received a loan agreement for {amount} {cur} in my name but I never applied for any loan.",
        f"A letter says my {card} limit was raised, but I never asked for that. I think someone is using my details.",
    ))


def _complaint(r: _Stream) -> str:
    topic = r.pick(_COMPLAINT_TOPICS)
    return r.pick((
        f"I want to make a formal complaint about {topic}.",
        f"I am very unhappy with {topic}. This is not the service I expect after ten years as a customer.",
        f"Complaint: {topic}. Nobody at {r.pick(_CHANNELS)} could explain it.",
        f"I have written twice about {topic} and still have no answer. I expect an apology.",
        f"Your staff at the branch in {r.pick(_CITIES)} were rude when I asked about {topic}.",
        f"I am disappointed by {topic}; I am thinking of moving my accounts to another bank.",
        f"Why was I charged {r.pick(_AMOUNTS)} {r.pick(_CURRENCIES)} in fees on my loan? I want this refunded.",
        "The way my loan application was handled was unacceptable, I waited six weeks for a reply.",
        f"I reported a fraudulent payment on my {r.pick(_CARDS)} {r.pick(_DAYS)} and I am still not refunded. "
        f"This is unacceptable.",
        "I asked for a payment holiday and was treated like a criminal on the phone. I want to complain.",
    ))


def _account_change(r: _Stream) -> str:
    field, product = r.pick(_FIELDS), r.pick(_PRODUCTS)
    return r.pick((
        f"Please {r.pick(_ACCOUNT_CHANGES)} {field} on {product}.",
        f"I moved to {r.pick(_CITIES)} and need to {r.pick(_ACCOUNT_CHANGES)} {field}.",
        f"How do I {r.pick(_ACCOUNT_CHANGES)} {field}? The option in {r.pick(_CHANNELS)} is greyed out.",
        f"I would like to add my partner to {product} as a second holder.",
        f"Can you switch {product} to paperless statements and {r.pick(_ACCOUNT_CHANGES)} {field}?",
        f"I got married and want to {r.pick(_ACCOUNT_CHANGES)} the name on {product}.",
        f"Please close {product} and move the balance to my current account.",
        f"I need to change the daily limit on my {r.pick(_CARDS)} and {r.pick(_ACCOUNT_CHANGES)} {field}.",
        f"Letters about my loan still go to my old flat. Please {r.pick(_ACCOUNT_CHANGES)} {field}.",
        f"My card was replaced after a fraud case; please {r.pick(_ACCOUNT_CHANGES)} {field} on the new one.",
    ))


def _hardship(r: _Stream) -> str:
    cause, ask = r.pick(_HARDSHIP_CAUSES), r.pick(_HARDSHIP_ASKS)
    return r.pick((
        f"{cause} and I cannot make my loan payment this month. Could I get {ask}?",
        f"I am struggling to pay my mortgage because {cause.lower()}. I would like to ask for {ask}.",
        f"{cause}. Is there any support for customers who cannot keep up with repayments?",
        f"Because {cause.lower()}, I will miss the next payment on my {r.pick(_CARDS)}. Can we agree on {ask}?",
        f"I am behind on two payments and worried about the fees. {cause}. Please tell me about {ask}.",
        f"Could you help me? {cause} and my savings are gone. I need {ask} on my loan.",
        f"I want to keep paying but {cause.lower()}; can I have {ask} until things improve?",
        f"Please call me about my arrears. {cause} and I would like {ask}.",
        f"The new fees on my account mean I cannot cover my loan repayment. {cause}. Is {ask} possible?",
        f"I do not want another loan, I need {ask} on the one I have because {cause.lower()}.",
    ))


_VAGUE = ("I need to speak to someone about my loan as soon as possible.", "Please call me back about my account.",
          "Something is not right with my card, can you contact me?", "Question about my mortgage.",
          "I have a problem with my loan payments.", "Can someone from the bank get in touch with me today?",
          "It is about the letter you sent me last week.", "Urgent: my account.")

_BODIES = {"loan_application": _loan, "fraud_report": _fraud, "complaint": _complaint,
           "account_change": _account_change, "hardship_request": _hardship}


def _typo(text: str, r: _Stream) -> str:
    """Swap two adjacent letters inside one word (a realistic typing slip)."""
    spots = [i for i in range(1, len(text) - 2) if text[i].isalpha() and text[i + 1].isalpha()]
    if not spots:
        return text
    i = spots[r.below(len(spots))]
    return text[:i] + text[i + 1] + text[i] + text[i + 2:]


def _message(label: str, r: _Stream, persona: str | None) -> tuple[str, bool]:
    """The message text and whether it was lower-cased (the persona sentence is inserted as given)."""
    parts = []
    if r.chance(60):
        parts.append(r.pick(_GREETINGS))
    body = r.pick(_VAGUE) if r.chance(6) else _BODIES[label](r)
    if persona is not None:
        parts.extend([persona, body] if r.chance(50) else [body, persona])
    else:
        parts.append(body)
    if r.chance(50):
        parts.append(r.pick(_CLOSINGS))
    text = " ".join(parts)
    lowered = r.chance(15)
    if lowered:
        text = text.lower()
    if r.chance(20):
        text = _typo(text, r)
    return text, lowered


def _persona(r: _Stream, percent: int) -> str | None:
    if not r.chance(percent):
        return None
    attribute = tuple(_PERSONAS)[r.below(len(_PERSONAS))]
    return r.pick(_PERSONAS[attribute])


def _key(text: str) -> str:
    """Texts that differ only in case or spacing count as the same message."""
    return " ".join(text.casefold().split())


def _examples(seed: int, stream: str, n: int, avoid: set[str]) -> list[dict[str, str]]:
    r = _Stream(seed, stream)
    out: list[dict[str, str]] = []
    seen = {_key(t) for t in avoid}
    while len(out) < n:
        label = LABELS[len(out) % len(LABELS)] if r.chance(70) else r.pick(LABELS)
        persona = _persona(r, 30)
        text, lowered = _message(label, r, "\x00" if persona else None)
        if persona:
            text = text.replace("\x00", persona.lower() if lowered else persona)
        if _key(text) in seen:
            continue
        seen.add(_key(text))
        out.append({"id": f"{stream}-{len(out):05d}", "label": label, "text": text})
    return out


def messages(*, seed: int, stream: str, n: int, avoid: set[str] | None = None) -> list[dict[str, str]]:
    """``n`` labelled messages ``{"id", "label", "text"}`` of the stream ``stream`` (no text repeats one of
    ``avoid``, ignoring case and spacing). Other examples build on these messages (``examples/bank-replies``)."""
    return _examples(seed, stream, n, set(avoid or ()))


def _probes(seed: int, n: int) -> list[dict[str, Any]]:
    r = _Stream(seed, "probes")
    out = []
    attributes = tuple(_PERSONAS)
    for i in range(n):
        attribute = attributes[i % len(attributes)]
        label = LABELS[(i // len(attributes)) % len(LABELS)]
        # one draw of the message, with a placeholder where the protected attribute goes
        template, lowered = _message(label, r, "\x00")
        choices = _PERSONAS[attribute]
        first = r.below(len(choices))
        count = min(len(choices), 2 + r.below(2))
        picked = [choices[(first + k) % len(choices)] for k in range(count)]
        variants = [template.replace("\x00", p.lower() if lowered else p) for p in picked]
        out.append({"attribute": attribute, "id": f"probe-{i:04d}", "variants": variants})
    return out


def generate(*, seed: int = SEED, n_train: int = 1500, n_eval: int = 300, n_probes: int = 60
             ) -> dict[str, list[dict[str, Any]]]:
    """The train, eval and probe rows for ``seed`` (eval texts never repeat a train text)."""
    train = _examples(seed, "train", n_train, set())
    evals = _examples(seed, "eval", n_eval, {row["text"] for row in train})
    return {"train": train, "eval": evals, "probes": _probes(seed, n_probes)}


def inputs(*, seed: int = SEED, n: int = 12) -> list[dict[str, str]]:
    """Requests for the demo's ``run``: fresh messages of every label, without labels."""
    rows = _examples(seed, "inputs", n, set())
    return [{"id": f"case-{i + 1:03d}", "text": row["text"]} for i, row in enumerate(rows)]


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n" for row in rows)


def write(out: Path, data: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """Write ``<name>.jsonl`` for each entry of ``data`` into ``out``; returns their ``sha256:<hex>`` digests."""
    out.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, rows in data.items():
        raw = _jsonl(rows)
        (out / f"{name}.jsonl").write_bytes(raw)
        digests[name] = "sha256:" + hashlib.sha256(raw).hexdigest()
    return digests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for train.jsonl, eval.jsonl, probes.jsonl")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--eval", type=int, default=300)
    parser.add_argument("--probes", type=int, default=60)
    parser.add_argument("--inputs", type=Path, help="also write this many demo requests (--inputs-count) here")
    parser.add_argument("--inputs-count", type=int, default=200)
    args = parser.parse_args(argv)
    data = generate(seed=args.seed, n_train=args.train, n_eval=args.eval, n_probes=args.probes)
    for name, value in write(args.out, data).items():
        print(f"{args.out / (name + '.jsonl')}  {value}")
    if args.inputs is not None:
        raw = _jsonl(inputs(seed=args.seed, n=args.inputs_count))     # type: ignore[arg-type]
        args.inputs.write_bytes(raw)
        print(f"{args.inputs}  sha256:{hashlib.sha256(raw).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

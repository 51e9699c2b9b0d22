"""PEFT methods that peft itself lacks, added through peft's own registration.

- :mod:`.bottleneck`: bottleneck adapters (Houlsby, Pfeiffer, parallel), peft type ``BOTTLENECK``.
- :mod:`.mam`: Mix-and-Match adapter (prefix at attention + parallel adapter at FFN), peft type
  ``MAM``.

Importing a submodule registers its peft type, after which stock ``get_peft_model`` and
``PeftModel.from_pretrained`` handle it like any built-in method.
"""

"""The demo task: a seeded clinic database (``clinic``), question templates with canonical SQL
(``templates``, built from ``slots``), the questions they ask (``questions``), SQL canonical
forms (``sql_text``) and the leak-free train/eval files built from them (``dataset``)."""

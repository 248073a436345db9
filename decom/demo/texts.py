"""Word banks and file-body makers for the demo EDM: people, organisations, titles and file bytes.

Everything is drawn from a caller's `random.Random`, so the same seed gives the same bytes.
"""

from __future__ import annotations

import random

RU_SURNAMES_M = ("Иванов", "Петров", "Смирнов", "Кузнецов", "Соколов", "Попов", "Лебедев", "Козлов",
                 "Новиков", "Морозов", "Волков", "Алексеев", "Фёдоров", "Николаев", "Орлов", "Захаров")
RU_FIRST_M = ("Алексей", "Дмитрий", "Сергей", "Андрей", "Михаил", "Игорь", "Павел", "Николай")
RU_FIRST_F = ("Елена", "Ольга", "Наталья", "Ирина", "Татьяна", "Мария", "Светлана", "Анна")
RU_PATRONYMIC_M = ("Александрович", "Сергеевич", "Викторович", "Петрович", "Игоревич")
RU_PATRONYMIC_F = ("Александровна", "Сергеевна", "Викторовна", "Петровна", "Игоревна")
UK_PEOPLE = (("Шевченко", "Тарас", "Григорович"), ("Коваленко", "Оксана", "Іванівна"),
             ("Бондаренко", "Олександр", "Миколайович"), ("Ткаченко", "Ірина", "Василівна"),
             ("Кравченко", "Богдан", "Олегович"), ("Олійник", "Юлія", "Петрівна"))
ZH_PEOPLE = (("王伟", "wang.wei"), ("李娜", "li.na"), ("张敏", "zhang.min"), ("刘洋", "liu.yang"),
             ("陈静", "chen.jing"), ("杨帆", "yang.fan"))
EN_PEOPLE = (("Margaret Hollis", "m.hollis"), ("David Okafor", "d.okafor"))

_TRANSLIT = dict(zip(
    "абвгґдеёєжзиіїйклмнопрстуфхцчшщъыьэюя",
    ["a", "b", "v", "g", "g", "d", "e", "e", "ye", "zh", "z", "i", "i", "yi", "y", "k", "l", "m", "n", "o",
     "p", "r", "s", "t", "u", "f", "kh", "ts", "ch", "sh", "shch", "", "y", "", "e", "yu", "ya"],
    strict=True,
))


def translit(text: str) -> str:
    """Latin spelling of a Cyrillic word, the way account names were made by hand."""
    return "".join(_TRANSLIT.get(ch, ch) for ch in text.lower())


def russian_person(rng: random.Random) -> tuple[str, str]:
    """(full name "Фамилия Имя Отчество", login base like "petrov.as")."""
    surname = rng.choice(RU_SURNAMES_M)
    if rng.random() < 0.5:
        first, patronymic = rng.choice(RU_FIRST_M), rng.choice(RU_PATRONYMIC_M)
    else:
        surname += "а"
        first, patronymic = rng.choice(RU_FIRST_F), rng.choice(RU_PATRONYMIC_F)
    login = f"{translit(surname)}.{translit(first[0])}{translit(patronymic[0])}"
    return f"{surname} {first} {patronymic}", login


DEPARTMENTS = (
    ("KANC", "Канцелярия"), ("JUR", "Юридический департамент"), ("FIN", "Финансовый департамент"),
    ("HR", "Отдел кадров"), ("IT", "Отдел информационных технологий"),
    ("INT", "Департамент международного сотрудничества"), ("MIN", "Приёмная министра"), ("ARCH", "Архив"),
)
ROLE_GROUPS = (("Администраторы СЭД", "role"), ("Регистраторы", "role"), ("Подписанты", "role"),
               ("Рабочая группа по цифровизации", "workgroup"), ("国际合作工作组", "workgroup"))

DOC_KINDS = (  # code, dictionary name, root folder, weight
    ("ORD", "Приказ", "Приказы", 14), ("IN", "Входящее письмо", "Входящие", 26),
    ("OUT", "Исходящее письмо", "Исходящие", 22), ("CTR", "Договор", "Договоры", 12),
    ("MEMO", "Служебная записка", "Служебные записки", 18), ("HR", "Кадровый приказ", "Кадры", 6),
    ("INTL", "Международное соглашение", "国际合作", 2),
)

_ORG_FORMS = ("ООО", "АО", "ПАО", "ГБУ", "ФГУП", "ТОВ", "ПрАТ")
_ORG_NAMES = ("Вектор", "Сибирские сети", "Северный экспресс", "Гарант-Сервис", "Информационные системы",
              "Техноресурс", "Альфа-Документ", "Київські телекомунікації", "Волга-Связь", "Меридиан",
              "Полярная звезда", "Цифрові рішення", "Архивные технологии", "Уральский печатный двор")


def counterparty_name(rng: random.Random, number: int) -> str:
    return f"{rng.choice(_ORG_FORMS)} «{rng.choice(_ORG_NAMES)}{'' if number < 14 else f' {number}'}»"


def inn(rng: random.Random) -> str:
    """A 10-digit Russian legal-entity tax id with a valid check digit."""
    digits = [rng.randint(1, 9)] + [rng.randint(0, 9) for _ in range(8)]
    weights = (2, 4, 10, 3, 5, 9, 4, 6, 8)
    check = sum(d * w for d, w in zip(digits, weights, strict=True)) % 11 % 10
    return "".join(map(str, digits)) + str(check)


_TITLES = {
    "ORD": ("О проведении инвентаризации архивного фонда", "Об утверждении регламента электронного "
            "документооборота", "О назначении ответственных за электронную подпись",
            "Про затвердження порядку обміну електронними документами"),
    "IN": ("Запрос о предоставлении сведений", "О согласовании проекта постановления",
           "Лист щодо надання інформації про виконання доручення", "关于电子印章使用管理的通知"),
    "OUT": ("Ответ на запрос о предоставлении сведений", "О направлении отчёта за квартал",
            "Information on the exchange of electronic documents"),
    "CTR": ("Договор поставки оборудования", "Договор на сопровождение системы", "Дополнительное соглашение"),
    "MEMO": ("О выделении рабочего места", "О продлении доступа к системе", "Про відпустку працівника"),
    "HR": ("О приёме на работу", "Об увольнении", "О предоставлении отпуска"),
    "INTL": ("Меморандум о сотрудничестве", "合作谅解备忘录", "Memorandum of understanding"),
}


def document_title(rng: random.Random, kind: str, number: int) -> str:
    return f"{rng.choice(_TITLES[kind])} ({number})"


_SENTENCES = {
    "ru": ("В соответствии с поручением министра прошу обеспечить подготовку материалов в срок.",
           "Ответственным за исполнение назначить начальника отдела.",
           "Контроль за исполнением настоящего приказа оставляю за собой.",
           "Документы передаются через систему межведомственного электронного взаимодействия.",
           "Сведения направляются в электронном виде с квалифицированной электронной подписью.",
           "Просим рассмотреть предложения и сообщить позицию департамента.",
           "Оригинал документа хранится в архиве канцелярии.",
           "Срок исполнения — десять рабочих дней с даты регистрации."),
    "uk": ("Відповідно до доручення прошу забезпечити підготовку матеріалів у встановлений строк.",
           "Документи надсилаються через систему електронної взаємодії органів виконавчої влади.",
           "Контроль за виконанням цього наказу залишаю за собою.",
           "Просимо розглянути пропозиції та повідомити позицію міністерства."),
    "zh": ("根据部长指示，请在规定期限内完成材料准备工作。", "电子印章的使用须经授权并记录在审计日志中。",
           "本文件通过部门间电子交换系统发送。", "请审阅上述建议并告知贵部门的意见。"),
    "en": ("Please prepare the materials within the agreed time frame.",
           "The documents are exchanged through the interagency electronic exchange system.",
           "The original is kept in the registry archive.",
           "We kindly ask you to review the proposals and share the department's position."),
}
LANGUAGES = ("ru", "ru", "ru", "uk", "zh", "en")

MINISTRY = "Министерство цифрового развития и связи (демо)"


def text_body(rng: random.Random, language: str, header: str, size: int) -> bytes:
    """A letter-like UTF-8 text of roughly `size` bytes in one language."""
    parts = [MINISTRY, header, ""]
    length = sum(len(p.encode()) + 1 for p in parts)
    while length < size:
        paragraph = " ".join(rng.choice(_SENTENCES[language]) for _ in range(rng.randint(2, 5)))
        parts.append(paragraph)
        length += len(paragraph.encode()) + 1
    return "\n".join(parts).encode("utf-8")


def binary_body(rng: random.Random, magic: bytes, trailer: bytes, size: int) -> bytes:
    """Random bytes between a format's magic number and trailer, like a scanned or office file."""
    return magic + rng.randbytes(max(size - len(magic) - len(trailer), 0)) + trailer


FILE_FORMATS = (  # extension, mime type, weight
    ("pdf", "application/pdf", 40),
    ("docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", 20),
    ("txt", "text/plain", 15),
    ("tif", "image/tiff", 10),
    ("xml", "application/xml", 8),
    ("odt", "application/vnd.oasis.opendocument.text", 7),
)


def file_body(rng: random.Random, extension: str, header: str) -> bytes:
    """Bytes of one stored file: a few hundred bytes to about 20 KB."""
    size = int(rng.triangular(300, 20_000, 2_500))
    if extension == "pdf":
        return binary_body(rng, b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", b"\n%%EOF\n", size)
    if extension in {"docx", "odt"}:
        return binary_body(rng, b"PK\x03\x04\x14\x00\x06\x00", b"PK\x05\x06" + bytes(18), size)
    if extension == "tif":
        return binary_body(rng, b"II*\x00\x08\x00\x00\x00", b"", size)
    language = rng.choice(LANGUAGES)
    if extension == "xml":
        body = text_body(rng, language, header, size - 120).decode()
        body = body.replace("&", "&amp;").replace("<", "&lt;")
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n<ЭДО версия="3">\n<Документ>{body}</Документ>\n'
                "</ЭДО>\n").encode()
    return text_body(rng, language, header, size)

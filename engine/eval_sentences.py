"""Held-out sentences that a training run's checkpoints are scored on.

Each checkpoint speaks these sentences; Whisper transcribes the speech and the word and
character error rates against the sentence (:mod:`engine.speech.scoring`) tell how intelligible the
voice still is. The sentences must be new to the model, so none may come from the voice's own
training text.

Every XTTS-v2 language (:data:`engine.languages.CODES`) has 12 sentences. The first 8 are the
defaults, in this order:

* two short sentences (3-6 words),
* two long sentences (20-30 words),
* two questions,
* two with numbers written in digits, covering a year or date, a time and a quantity or price
  (e.g. "The bus leaves at 6:30, and a return ticket costs 12 pounds.").

The last 4 are spares, one of each kind (short, question, number, long), taken in order when a
default appears in the voice's training text (:func:`default_sentences`). Words, not
characters, are counted for languages written with spaces; Chinese and Japanese sentences are of
comparable length.

They are original, plain, everyday sentences written for Timbre, in each language's normal
script and punctuation (not word-for-word translations of one list), with no names of real
people and no brands. Numbers are written so that XTTS-v2's text cleaner reads them as cardinals:
Western digits, never a digit right before a full stop or glued to letters that its ordinal
patterns match. Hindi is the exception that cleaner cannot handle: it spells digits out with
num2words, which has no Hindi (0.5.14), so coqui-tts 0.28 raises NotImplementedError for Hindi
text holding any digit (idiap/coqui-ai-TTS#370). The Hindi number sentences therefore spell their
numbers in words (a year, a time and a price, a count), which the model can speak; Whisper may
write them back as digits, which costs some CER in every checkpoint and the baseline alike.

:func:`check_sentences` validates the sentences a training config lists instead of the defaults.
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.speech.scoring import normalise

#: How many sentences a run is scored on by default.
DEFAULT_COUNT = 8
#: Most sentences a training config may list (each one is generated and transcribed per checkpoint).
MAX_SENTENCES = 50
#: Longest sentence a training config may list, in characters (XTTS-v2 speaks about 250 at a time).
MAX_SENTENCE_CHARS = 300

#: XTTS-v2 language code → 12 sentences: short, short, long, long, question, question,
#: number, number (the defaults), then the spares: short, question, number, long.
SENTENCES: dict[str, tuple[str, ...]] = {
    "en": (
        "Please close the door.",
        "The soup is still hot.",
        "When the rain finally stopped, we walked down to the river and watched the ducks paddle slowly past the old wooden bridge near the mill.",
        "My neighbour grows tomatoes, beans and peppers in her small garden, and every summer she leaves a basket of them on our doorstep without saying a word.",
        "Have you seen my reading glasses anywhere?",
        "What time does the library open on weekends?",
        "The new school on our street opened in 2014 with only 90 pupils.",
        "The bus leaves at 6:30, and a return ticket costs 12 pounds.",
        "The kettle is boiling.",
        "Could you help me carry these boxes upstairs?",
        "On 14 March 2022, she ordered 3 loaves of bread for the party.",
        "Before leaving for work each morning, he checks the weather, waters the plants on the windowsill, and makes sure the cat has enough food for the day.",
    ),
    "es": (
        "Hoy hace mucho frío.",
        "Me encanta este café.",
        "Cuando era pequeño, pasaba los veranos en casa de mis abuelos, donde aprendí a montar en bicicleta y a pescar en el arroyo que cruzaba el pueblo.",
        "La panadería de la esquina abre muy temprano, así que siempre compramos el pan recién hecho antes de llevar a los niños al colegio.",
        "¿Dónde has dejado las llaves del coche?",
        "¿Te apetece dar un paseo después de cenar?",
        "Nos mudamos a esta ciudad en el año 2016 con dos maletas.",
        "La reunión empieza a las 9:30 y somos 15 personas.",
        "La sopa está lista.",
        "¿Cuánto tiempo se tarda en llegar a la playa?",
        "El kilo de naranjas cuesta 3 euros en el mercado.",
        "Mi hermana trabaja en un hospital por las noches, de modo que durante el día duerme con las persianas bajadas y el teléfono en silencio.",
    ),
    "fr": (
        "Il pleut depuis ce matin.",
        "Le dîner est servi.",
        "Chaque dimanche, nous allons au marché du village pour acheter des fruits, du fromage et des fleurs, puis nous déjeunons tranquillement sur la terrasse.",
        "Le vieux professeur de musique habite au dernier étage de l'immeuble, et le soir, on l'entend souvent jouer du piano jusqu'à la tombée de la nuit.",
        "Est-ce que tu as bien dormi ?",
        "À quelle heure ferme la boulangerie ?",
        "Nous avons acheté cette maison en 2009, juste avant la naissance de notre fils.",
        "Le cours de yoga commence à 18 heures et coûte 10 euros.",
        "J'ai oublié mon parapluie.",
        "Pourrais-tu fermer la fenêtre, s'il te plaît ?",
        "Il faut 250 grammes de farine et 3 œufs pour ce gâteau.",
        "Après une longue journée de travail, elle aime rentrer à pied en traversant le parc, même quand il fait froid et que les allées sont couvertes de feuilles.",
    ),
    "de": (
        "Das Wasser ist zu kalt.",
        "Ich komme gleich wieder.",
        "Am Wochenende fahren wir oft mit dem Fahrrad an den See, packen ein kleines Picknick ein und bleiben dort, bis die Sonne langsam hinter den Bäumen verschwindet.",
        "Unsere Nachbarin hat im Herbst alle Äpfel aus ihrem Garten gepflückt und daraus so viel Kuchen gebacken, dass die ganze Straße etwas davon bekommen hat.",
        "Hast du heute schon etwas gegessen?",
        "Wie weit ist es bis zum Bahnhof?",
        "Meine Eltern haben im Jahr 2005 dieses alte Haus gekauft.",
        "Der Kurs beginnt um 18:30 Uhr und kostet 25 Euro.",
        "Bitte mach das Licht aus.",
        "Kannst du mir morgen beim Umzug helfen?",
        "Für den Kuchen braucht man 4 Eier und 200 Gramm Zucker.",
        "Als ich gestern Abend nach Hause kam, saß der Hund schon vor der Tür und wartete geduldig darauf, dass endlich jemand mit ihm spazieren geht.",
    ),
    "it": (
        "Oggi il cielo è sereno.",
        "Passami il sale, per favore.",
        "Ogni mattina mia nonna apre le finestre, prepara il caffè nella vecchia caffettiera e si siede sul balcone ad ascoltare il rumore della strada che si sveglia.",
        "Durante le vacanze abbiamo affittato una piccola casa vicino al mare, e ogni sera cenavamo in giardino guardando le barche dei pescatori tornare al porto.",
        "Che cosa vuoi mangiare stasera?",
        "Sai dove si trova la farmacia più vicina?",
        "Ci siamo sposati nel 2012 in una piccola chiesa di campagna.",
        "Il museo apre alle 9:30 e il biglietto costa 8 euro.",
        "Il treno è in ritardo.",
        "Posso aprire un po' la finestra?",
        "In questa scuola ci sono 350 studenti e 28 insegnanti.",
        "Quando ho finito di lavorare, sono passato dal fornaio a prendere il pane, ma era già chiuso, così ho comprato dei biscotti al supermercato sotto casa.",
    ),
    "pt": (
        "O jantar está pronto.",
        "Vou chegar um pouco atrasado.",
        "No verão passado, fizemos um acampamento perto de uma cachoeira e, todas as noites, ficávamos sentados ao redor da fogueira, contando histórias e olhando as estrelas.",
        "A biblioteca do bairro recebe muitos livros doados pelos moradores, e uma vez por mês organiza uma feira onde cada pessoa pode levar dois livros para casa.",
        "Sabe onde fica o correio mais próximo?",
        "Quer mais um pouco de chá?",
        "A minha irmã começou a trabalhar como enfermeira em 2017, logo depois do curso.",
        "A padaria abre às 6:30 e faz 200 pães por dia.",
        "Está muito calor hoje.",
        "Quanto tempo demora a viagem?",
        "O meu avô fez 85 anos no dia 12 de abril.",
        "Depois do almoço, gosto de caminhar pela praia durante meia hora, porque o vento do mar me ajuda a pensar e a esquecer os problemas do trabalho.",
    ),
    "pl": (
        "Dzisiaj jest bardzo zimno.",
        "Zamknij proszę okno.",
        "W każdą sobotę rano chodzimy z dziećmi na targ, gdzie kupujemy świeże warzywa, jajka i chleb, a potem pijemy herbatę w małej kawiarni na rogu.",
        "Mój dziadek przez całe życie pracował jako stolarz i do dziś w jego warsztacie pachnie drewnem, a na ścianach wiszą stare narzędzia, których nikt już nie używa.",
        "Czy masz ochotę na spacer?",
        "Gdzie jest najbliższy przystanek autobusowy?",
        "Przeprowadziliśmy się do tego miasta w 2015 roku.",
        "Pociąg odjeżdża o 6:40, a bilet kosztuje 30 złotych.",
        "Obiad jest już gotowy.",
        "Czy możesz mi pomóc z tymi torbami?",
        "Na urodziny babci przyszło ponad 40 osób.",
        "Kiedy wróciłam wieczorem do domu, kot spał na parapecie, a na stole czekała kolacja, którą przygotował dla mnie brat, zanim wyszedł do pracy.",
    ),
    "tr": (
        "Bugün hava çok güzel.",
        "Yarın erken kalkacağım.",
        "Her sabah işe gitmeden önce mahalledeki fırından sıcak bir simit alıyorum, sonra vapurda denizin üstünde uçan martıları izleyerek kahvaltımı ağır ağır yapıyorum.",
        "Geçen yaz köydeki eski evimize gittik ve bütün gün bahçede çalışıp akşamları da ailece büyük ceviz ağacının altında oturarak uzun uzun sohbet ettik.",
        "Bu akşam ne yemek istersin?",
        "Otobüs durağı buradan uzak mı?",
        "Bu okul 2010 yılında açıldı.",
        "Film saat 20:15'te başlıyor ve bir bilet 150 lira tutuyor.",
        "Çaylar birazdan hazır olur.",
        "Bana biraz yardım edebilir misin?",
        "Bu tarifte 3 yumurta ve 2 su bardağı un var.",
        "Kış gelince babam odunları bahçenin köşesine düzgünce dizer, annem de turşu ve reçel kavanozlarını kilerdeki raflara yerleştirir, böylece evimiz soğuk aylara hazır olur.",
    ),
    "ru": (
        "За окном падает снег.",
        "Я сейчас вернусь.",
        "Каждое лето мы ездили к бабушке в деревню, где целыми днями купались в реке, собирали грибы в лесу и пили парное молоко по вечерам.",
        "Наш сосед с третьего этажа по выходным чинит старые велосипеды во дворе, и к нему постоянно приходят дети, чтобы посмотреть, как он работает.",
        "Ты не видел мои ключи?",
        "Сколько стоит билет до центра?",
        "Мы переехали в этот город в 2013 году.",
        "Рынок открывается в 8:30, и килограмм яблок там стоит 90 рублей.",
        "Чай уже остыл.",
        "Можно открыть окно?",
        "В нашей школе учится 600 детей.",
        "Вечером, когда все дела были закончены, мы сели на веранде, заварили крепкий чай и долго разговаривали о том, куда поедем следующим летом.",
    ),
    "nl": (
        "Het regent al de hele dag.",
        "Ik ben zo terug.",
        "Elke zaterdag fietsen we met de kinderen naar de markt in het dorp, waar we verse groenten kopen en daarna samen een warme chocolademelk drinken.",
        "Mijn oom woont al jaren op een woonboot aan de rand van de stad en zegt dat hij nergens zo goed slaapt als op het water.",
        "Heb je zin in een kopje koffie?",
        "Hoe laat vertrekt de laatste bus?",
        "Onze buren wonen sinds 2007 in dit huis.",
        "De winkel gaat om 8:30 open en een brood kost er 3 euro.",
        "De soep is te zout.",
        "Kun je me morgen even helpen?",
        "Voor dit recept heb je 500 gram bloem en 2 eieren nodig.",
        "Toen we gisteren langs het kanaal wandelden, zagen we een reiger die heel stil tussen het riet stond te wachten tot er een vis voorbij zwom.",
    ),
    "cs": (
        "Venku je krásně.",
        "Hned jsem zpátky.",
        "Každou neděli chodíme s rodiči na procházku do lesa za městem, sbíráme houby a borůvky a potom si doma uvaříme velký hrnec polévky.",
        "Moje babička má na zahradě malý skleník, ve kterém pěstuje rajčata, papriky a okurky, a každé léto z nich dělá výborné domácí saláty.",
        "Máš dnes večer čas?",
        "Kde je tady nejbližší zastávka?",
        "V roce 2018 jsme se přestěhovali do tohoto bytu.",
        "Vlak odjíždí v 7:15 a jízdenka stojí 120 korun.",
        "Polévka je ještě horká.",
        "Můžeš mi prosím podat sůl?",
        "Na výlet jede 25 dětí a 3 učitelé.",
        "Když jsme se včera vraceli z práce, začalo najednou silně pršet, a tak jsme se schovali v malé kavárně a počkali, až bouřka přejde.",
    ),
    "ar": (
        "الجو جميل اليوم.",
        "سأعود بعد قليل.",
        "في كل صباح يخرج جدي إلى الحديقة ليسقي الأشجار ويطعم العصافير، ثم يجلس على المقعد الخشبي ويشرب قهوته بهدوء قبل أن يستيقظ أحد.",
        "عندما كنت صغيرا كنت أقضي العطلة الصيفية في بيت خالتي قرب البحر، وكنا نسبح طوال النهار ونبني قصورا من الرمل على الشاطئ.",
        "هل تريد كوبا من الشاي؟",
        "أين أقرب محطة للحافلات؟",
        "في عام 2012 افتتحت مكتبة جديدة في حينا.",
        "يبدأ الدرس في الساعة 4:30 ويحضره 20 طالبا.",
        "الطعام جاهز الآن.",
        "هل يمكنك أن تساعدني في حمل هذه الحقيبة؟",
        "اشترت أمي 3 كيلوغرامات من البرتقال من السوق.",
        "بعد أن انتهينا من العشاء جلسنا جميعا في الشرفة نتحدث عن ذكريات الطفولة، بينما كانت النسمات الباردة تهب من جهة البحر.",
    ),
    "zh-cn": (
        "今天天气很好。",
        "请把门关上。",
        "每到周末，我们全家都会去郊外的小山上散步，一边呼吸新鲜空气，一边看看路边的野花，回来的时候大家都觉得特别轻松。",
        "我小时候住在外婆家，院子里有一棵很大的桂花树，每年秋天花开的时候，整条街都能闻到淡淡的香味。",
        "你今天晚上想吃什么？",
        "请问最近的地铁站怎么走？",
        "我们是2015年搬到这个城市的。",
        "火车早上7点20分出发，一张票要85元。",
        "汤已经凉了。",
        "你能帮我拿一下这个箱子吗？",
        "这本书一共有320页，我已经看了一半。",
        "下班以后，她常常先去菜市场买些新鲜的蔬菜和水果，然后慢慢走回家，给家人做一顿简单又好吃的晚饭。",
    ),
    "hu": (
        "Ma nagyon szép idő van.",
        "Kérlek, csukd be az ajtót.",
        "Minden vasárnap reggel a nagymamám friss kalácsot süt, és mire felébredünk, az egész házban érezni lehet a vaj és a fahéj illatát.",
        "Tavaly nyáron egy kis faházat béreltünk a tó partján, ahol egész nap úsztunk és horgásztunk, esténként pedig a teraszon ülve néztük a naplementét.",
        "Kérsz egy csésze teát?",
        "Merre van a legközelebbi buszmegálló?",
        "A húgom 2014-ben kezdett el zongorázni.",
        "A vonat 6:45-kor indul, és a jegy 2500 forintba kerül.",
        "A leves még forró.",
        "Segítenél felvinni ezeket a dobozokat?",
        "Az osztályunkba 28 diák jár.",
        "Amikor tegnap este hazaértem, a kutya már az ajtó előtt várt rám, ezért gyorsan átöltöztem, és elmentünk egy hosszú sétára a folyópartra.",
    ),
    "ko": (
        "오늘 날씨가 정말 좋네요.",
        "잠깐만 기다려 주세요.",
        "주말마다 우리 가족은 집 근처 공원에 가서 자전거를 타고, 점심에는 나무 그늘 아래에서 직접 싸 온 김밥을 함께 나눠 먹습니다.",
        "어렸을 때 여름 방학이 되면 시골에 계신 할머니 댁에 가서 매일 개울에서 물고기를 잡고 밤에는 마당에 누워 별을 보곤 했습니다.",
        "저녁에 뭐 먹고 싶어요?",
        "이 버스가 시청까지 가나요?",
        "우리는 2017년에 이 동네로 이사했습니다.",
        "영화는 19시 40분에 시작하고, 표 한 장에 12000원입니다.",
        "국이 벌써 다 식었어요.",
        "창문 좀 열어도 될까요?",
        "집에서 학교까지는 걸어서 15분 정도 걸립니다.",
        "오후에 비가 그친 뒤에 우리는 강가를 따라 천천히 걸으면서 물 위를 날아다니는 새들을 구경하고, 작은 찻집에 들어가 따뜻한 차를 마셨습니다.",
    ),
    "ja": (
        "今日はとても寒いです。",
        "すぐに戻ります。",
        "毎週日曜日の朝、私たちは近くの公園まで散歩して、池のそばのベンチに座りながら、温かいお茶を飲んでゆっくり過ごします。",
        "子どもの頃、夏休みになると祖父母の家に泊まりに行き、毎日川で魚を捕ったり、夜は庭で花火をしたりして楽しく過ごしました。",
        "駅までどのくらいかかりますか？",
        "明日の会議は何時からですか？",
        "私たちは2016年にこの町に引っ越してきました。",
        "バスは朝7時15分に出発して、運賃は230円です。",
        "お茶が冷めてしまいました。",
        "窓を少し開けてもいいですか？",
        "このケーキを作るには、卵が3個と砂糖が100グラム必要です。",
        "仕事が終わったあと、駅前のパン屋で焼きたてのパンを買って、家族と一緒に夕ご飯を食べるのが、私の一番の楽しみです。",
    ),
    "hi": (
        "आज मौसम बहुत अच्छा है।",
        "मैं अभी आता हूँ।",
        "हर रविवार की सुबह हम पूरे परिवार के साथ पास के बगीचे में टहलने जाते हैं और लौटते समय गरम चाय के साथ समोसे खाते हैं।",
        "बचपन में गर्मियों की छुट्टियों में मैं अपनी नानी के गाँव जाता था, जहाँ हम दिन भर आम के पेड़ों के नीचे खेलते और नदी में नहाते थे।",
        "क्या आप मेरे साथ चाय पिएँगे?",
        "यहाँ से रेलवे स्टेशन कितनी दूर है?",
        "हमने यह घर दो हज़ार बारह में खरीदा था।",
        "बस सुबह साढ़े छह बजे चलती है और टिकट चालीस रुपये का है।",
        "खाना तैयार हो गया है।",
        "क्या आप मेरी थोड़ी मदद कर सकते हैं?",
        "इस कक्षा में पैंतीस बच्चे पढ़ते हैं।",
        "शाम को काम से लौटकर वह अपने छोटे भाई को गणित पढ़ाती है, फिर छत पर बैठकर थोड़ी देर पुराने गाने सुनती है और आराम करती है।",
    ),
}


def _contained(sentence: str, texts: list[str]) -> bool:
    """Whether the normalised ``sentence`` equals or is part of one of the normalised ``texts``."""
    return any(sentence in text for text in texts)


def default_sentences(language: str, exclude: Iterable[str] = (), count: int = DEFAULT_COUNT) -> list[str]:
    """The sentences a run in ``language`` is scored on: the first ``count`` of
    :data:`SENTENCES` [``language``] that are not in the training text.

    A sentence is in the training text when, normalised as the scores compare texts
    (:func:`engine.speech.scoring.normalise`: case, punctuation and, for English, spelling and numbers
    do not matter), it equals a normalised text of ``exclude`` or is contained in one (a clip
    that reads the sentence among others).

    Args:
        language: an XTTS-v2 language code, a key of :data:`SENTENCES` (``"en"``, ``"zh-cn"``, …).
        exclude: the training texts (the transcripts of the voice's clips); a single string is
            taken as one text.
        count: how many sentences, 1 to 12; the defaults are 8.

    Returns:
        The sentences as written, in :data:`SENTENCES` order: the defaults not excluded, then
        spares in place of those excluded. Fewer than ``count`` only when the 12 sentences run
        out (so many of them are in the training text that too few are left).

    Raises:
        ValueError: ``language`` has no sentences (the message lists the supported codes), or
            ``count`` is not between 1 and 12.
    """
    if language not in SENTENCES:
        raise ValueError(
            f"no evaluation sentences for language {language!r}; the supported languages are {', '.join(SENTENCES)}"
        )
    sentences = SENTENCES[language]
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(sentences):
        raise ValueError(f"count must be a whole number from 1 to {len(sentences)}, got {count!r}")
    if isinstance(exclude, str):
        exclude = (exclude,)
    texts = [text for text in (normalise(item, language) for item in exclude) if text]
    chosen: list[str] = []
    for sentence in sentences:
        if not _contained(normalise(sentence, language), texts):
            chosen.append(sentence)
            if len(chosen) == count:
                break
    return chosen


def check_sentences(sentences: list, field: str = "eval_sentences") -> list[str]:
    """Validate the evaluation sentences a training config lists.

    Args:
        sentences: a list (or tuple) of 1 to :data:`MAX_SENTENCES` strings, each non-empty after
            stripping white space and at most :data:`MAX_SENTENCE_CHARS` characters.
        field: the config field named in error messages.

    Returns:
        The sentences, stripped, as a new list.

    Raises:
        ValueError: the message starts with ``field`` and says what is wrong; for a bad item it
            names the item's index (from 0), e.g. ``"eval_sentences[2]: is empty"``.
    """
    if not isinstance(sentences, list | tuple):
        raise ValueError(f"{field}: must be a list of sentences, got {type(sentences).__name__}")
    if not sentences:
        raise ValueError(f"{field}: must list at least one sentence")
    if len(sentences) > MAX_SENTENCES:
        raise ValueError(f"{field}: at most {MAX_SENTENCES} sentences, got {len(sentences)}")
    checked: list[str] = []
    for index, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise ValueError(f"{field}[{index}]: must be a string, got {type(sentence).__name__} {sentence!r}")
        text = sentence.strip()
        if not text:
            raise ValueError(f"{field}[{index}]: is empty")
        if len(text) > MAX_SENTENCE_CHARS:
            raise ValueError(
                f"{field}[{index}]: is {len(text)} characters long; at most {MAX_SENTENCE_CHARS} are allowed"
            )
        checked.append(text)
    return checked

"""The corpus's bilingual lexicon: English words and their "French-like" forms.

The French side borrows real French words but simplifies the grammar on purpose: no elision
(``le arbre``), no contraction (``de le roi``), every adjective after its noun. What it keeps is what
makes translation hard for a fixed vector: gender and number agreement and word-order changes.
"""

from __future__ import annotations

MASC, FEM = "m", "f"

# (English singular, English plural, French singular, French plural, gender)
NOUNS: tuple[tuple[str, str, str, str, str], ...] = (
    ("cat", "cats", "chat", "chats", MASC),
    ("dog", "dogs", "chien", "chiens", MASC),
    ("boy", "boys", "garçon", "garçons", MASC),
    ("man", "men", "homme", "hommes", MASC),
    ("book", "books", "livre", "livres", MASC),
    ("garden", "gardens", "jardin", "jardins", MASC),
    ("bird", "birds", "oiseau", "oiseaux", MASC),
    ("horse", "horses", "cheval", "chevaux", MASC),
    ("king", "kings", "roi", "rois", MASC),
    ("teacher", "teachers", "professeur", "professeurs", MASC),
    ("doctor", "doctors", "médecin", "médecins", MASC),
    ("child", "children", "enfant", "enfants", MASC),
    ("friend", "friends", "ami", "amis", MASC),
    ("neighbour", "neighbours", "voisin", "voisins", MASC),
    ("soldier", "soldiers", "soldat", "soldats", MASC),
    ("merchant", "merchants", "marchand", "marchands", MASC),
    ("village", "villages", "village", "villages", MASC),
    ("castle", "castles", "château", "châteaux", MASC),
    ("bridge", "bridges", "pont", "ponts", MASC),
    ("boat", "boats", "bateau", "bateaux", MASC),
    ("tree", "trees", "arbre", "arbres", MASC),
    ("path", "paths", "chemin", "chemins", MASC),
    ("lake", "lakes", "lac", "lacs", MASC),
    ("market", "markets", "marché", "marchés", MASC),
    ("train", "trains", "train", "trains", MASC),
    ("museum", "museums", "musée", "musées", MASC),
    ("fish", "fishes", "poisson", "poissons", MASC),
    ("wolf", "wolves", "loup", "loups", MASC),
    ("fox", "foxes", "renard", "renards", MASC),
    ("farmer", "farmers", "fermier", "fermiers", MASC),
    ("hat", "hats", "chapeau", "chapeaux", MASC),
    ("basket", "baskets", "panier", "paniers", MASC),
    ("knife", "knives", "couteau", "couteaux", MASC),
    ("cake", "cakes", "gâteau", "gâteaux", MASC),
    ("brother", "brothers", "frère", "frères", MASC),
    ("father", "fathers", "père", "pères", MASC),
    ("girl", "girls", "fille", "filles", FEM),
    ("woman", "women", "femme", "femmes", FEM),
    ("house", "houses", "maison", "maisons", FEM),
    ("table", "tables", "table", "tables", FEM),
    ("car", "cars", "voiture", "voitures", FEM),
    ("city", "cities", "ville", "villes", FEM),
    ("river", "rivers", "rivière", "rivières", FEM),
    ("forest", "forests", "forêt", "forêts", FEM),
    ("flower", "flowers", "fleur", "fleurs", FEM),
    ("door", "doors", "porte", "portes", FEM),
    ("window", "windows", "fenêtre", "fenêtres", FEM),
    ("letter", "letters", "lettre", "lettres", FEM),
    ("queen", "queens", "reine", "reines", FEM),
    ("mouse", "mice", "souris", "souris", FEM),
    ("chair", "chairs", "chaise", "chaises", FEM),
    ("street", "streets", "rue", "rues", FEM),
    ("mountain", "mountains", "montagne", "montagnes", FEM),
    ("school", "schools", "école", "écoles", FEM),
    ("church", "churches", "église", "églises", FEM),
    ("tower", "towers", "tour", "tours", FEM),
    ("lamp", "lamps", "lampe", "lampes", FEM),
    ("apple", "apples", "pomme", "pommes", FEM),
    ("key", "keys", "clé", "clés", FEM),
    ("box", "boxes", "boîte", "boîtes", FEM),
    ("story", "stories", "histoire", "histoires", FEM),
    ("song", "songs", "chanson", "chansons", FEM),
    ("dress", "dresses", "robe", "robes", FEM),
    ("star", "stars", "étoile", "étoiles", FEM),
    ("beach", "beaches", "plage", "plages", FEM),
    ("island", "islands", "île", "îles", FEM),
    ("cow", "cows", "vache", "vaches", FEM),
    ("goat", "goats", "chèvre", "chèvres", FEM),
    ("sister", "sisters", "sœur", "sœurs", FEM),
    ("mother", "mothers", "mère", "mères", FEM),
)

# (English, French masculine singular, feminine singular, masculine plural, feminine plural)
ADJECTIVES: tuple[tuple[str, str, str, str, str], ...] = (
    ("big", "grand", "grande", "grands", "grandes"),
    ("small", "petit", "petite", "petits", "petites"),
    ("red", "rouge", "rouge", "rouges", "rouges"),
    ("green", "vert", "verte", "verts", "vertes"),
    ("blue", "bleu", "bleue", "bleus", "bleues"),
    ("black", "noir", "noire", "noirs", "noires"),
    ("white", "blanc", "blanche", "blancs", "blanches"),
    ("old", "vieux", "vieille", "vieux", "vieilles"),
    ("young", "jeune", "jeune", "jeunes", "jeunes"),
    ("happy", "heureux", "heureuse", "heureux", "heureuses"),
    ("sad", "triste", "triste", "tristes", "tristes"),
    ("beautiful", "beau", "belle", "beaux", "belles"),
    ("new", "nouveau", "nouvelle", "nouveaux", "nouvelles"),
    ("strong", "fort", "forte", "forts", "fortes"),
    ("quiet", "calme", "calme", "calmes", "calmes"),
    ("heavy", "lourd", "lourde", "lourds", "lourdes"),
    ("rich", "riche", "riche", "riches", "riches"),
    ("poor", "pauvre", "pauvre", "pauvres", "pauvres"),
    ("clever", "intelligent", "intelligente", "intelligents", "intelligentes"),
    ("brave", "courageux", "courageuse", "courageux", "courageuses"),
    ("lazy", "paresseux", "paresseuse", "paresseux", "paresseuses"),
    ("tired", "fatigué", "fatiguée", "fatigués", "fatiguées"),
    ("round", "rond", "ronde", "ronds", "rondes"),
    ("warm", "chaud", "chaude", "chauds", "chaudes"),
    ("cold", "froid", "froide", "froids", "froides"),
    ("dark", "sombre", "sombre", "sombres", "sombres"),
    ("empty", "vide", "vide", "vides", "vides"),
    ("full", "plein", "pleine", "pleins", "pleines"),
    ("strange", "étrange", "étrange", "étranges", "étranges"),
    ("famous", "célèbre", "célèbre", "célèbres", "célèbres"),
    ("grey", "gris", "grise", "gris", "grises"),
    ("yellow", "jaune", "jaune", "jaunes", "jaunes"),
    ("long", "long", "longue", "longs", "longues"),
    ("short", "court", "courte", "courts", "courtes"),
    ("wild", "sauvage", "sauvage", "sauvages", "sauvages"),
    ("gentle", "doux", "douce", "doux", "douces"),
    ("proud", "fier", "fière", "fiers", "fières"),
)

# (English 3rd person singular, English base form, French 3rd singular, French 3rd plural)
TRANSITIVE_VERBS: tuple[tuple[str, str, str, str], ...] = (
    ("sees", "see", "voit", "voient"),
    ("likes", "like", "aime", "aiment"),
    ("takes", "take", "prend", "prennent"),
    ("finds", "find", "trouve", "trouvent"),
    ("watches", "watch", "regarde", "regardent"),
    ("follows", "follow", "suit", "suivent"),
    ("helps", "help", "aide", "aident"),
    ("calls", "call", "appelle", "appellent"),
    ("carries", "carry", "porte", "portent"),
    ("paints", "paint", "peint", "peignent"),
    ("buys", "buy", "achète", "achètent"),
    ("sells", "sell", "vend", "vendent"),
    ("visits", "visit", "visite", "visitent"),
    ("opens", "open", "ouvre", "ouvrent"),
    ("closes", "close", "ferme", "ferment"),
    ("knows", "know", "connaît", "connaissent"),
    ("hears", "hear", "entend", "entendent"),
    ("meets", "meet", "rencontre", "rencontrent"),
    ("chases", "chase", "chasse", "chassent"),
    ("builds", "build", "construit", "construisent"),
    ("cleans", "clean", "nettoie", "nettoient"),
    ("loses", "lose", "perd", "perdent"),
    ("draws", "draw", "dessine", "dessinent"),
    ("reads", "read", "lit", "lisent"),
)

INTRANSITIVE_VERBS: tuple[tuple[str, str, str, str], ...] = (
    ("sleeps", "sleep", "dort", "dorment"),
    ("runs", "run", "court", "courent"),
    ("sings", "sing", "chante", "chantent"),
    ("laughs", "laugh", "rit", "rient"),
    ("waits", "wait", "attend", "attendent"),
    ("works", "work", "travaille", "travaillent"),
    ("dances", "dance", "danse", "dansent"),
    ("swims", "swim", "nage", "nagent"),
    ("falls", "fall", "tombe", "tombent"),
    ("smiles", "smile", "sourit", "sourient"),
    ("cries", "cry", "pleure", "pleurent"),
    ("arrives", "arrive", "arrive", "arrivent"),
    ("plays", "play", "joue", "jouent"),
    ("walks", "walk", "marche", "marchent"),
    ("listens", "listen", "écoute", "écoutent"),
)

# Frequency adverbs stand before the verb in English and after it in French (a local swap).
FREQUENCY_ADVERBS: tuple[tuple[str, str], ...] = (
    ("often", "souvent"),
    ("always", "toujours"),
    ("sometimes", "parfois"),
    ("rarely", "rarement"),
)

# Manner adverbs close the verb phrase in both languages.
MANNER_ADVERBS: tuple[tuple[str, str], ...] = (
    ("quickly", "vite"),
    ("slowly", "lentement"),
    ("quietly", "doucement"),
    ("happily", "joyeusement"),
    ("again", "encore"),
    ("well", "bien"),
)

# (English words, French words): some are one word to two, or three to one.
PREPOSITIONS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("in",), ("dans",)),
    (("on",), ("sur",)),
    (("under",), ("sous",)),
    (("with",), ("avec",)),
    (("behind",), ("derrière",)),
    (("without",), ("sans",)),
    (("for",), ("pour",)),
    (("near",), ("près", "de")),
    (("in", "front", "of"), ("devant",)),
    (("next", "to"), ("à", "côté", "de")),
)

CONJUNCTIONS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("and",), ("et",)),
    (("but",), ("mais",)),
    (("because",), ("parce", "que")),
    (("while",), ("pendant", "que")),
)

# Determiners: English singular and plural forms and the French ones by gender and number;
# None where a form does not exist (no plural of "a" or "every").
# (English singular, English plural, French m. sg., f. sg., plural)
DETERMINERS: tuple[tuple[str | None, str | None, str | None, str | None, str | None], ...] = (
    ("the", "the", "le", "la", "les"),
    ("a", "some", "un", "une", "des"),
    ("this", "these", "ce", "cette", "ces"),
    ("my", "my", "mon", "ma", "mes"),
    ("every", None, "chaque", "chaque", None),
    (None, "two", None, None, "deux"),
    (None, "three", None, None, "trois"),
)

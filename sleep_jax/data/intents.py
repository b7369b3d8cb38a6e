"""Class-incremental intent classification data (CLINC150 / Banking77 style), generated from templates.

70 intents in 10 domains, each with a label name and a description. Utterances are composed from
intent templates x slot fillers x paraphrase wrappers (questions, commands, indirect requests), with
occasional typos and casing variants, so a class has many distinct surface forms. Classes are grouped into
stages of new classes (`stages(seed)`): a continual learner sees the stages one after another.

Deterministic in the seed. Utterances are de-duplicated on their normalised clean form, which is also the
split key (`assign_split`), so no utterance, nor a typo or casing variant of it, is in two splits. Reading
'test' needs allow_test=True.
"""
from __future__ import annotations

import itertools
import re
import string

import numpy as np

from sleep_jax.data.splits import assign_split, check_split

VERSION = '1.0.0'
N_STAGES = 7
PER_CLASS = 100         # distinct utterances drawn per class before splitting
QUESTION_SHARE = 0.3    # of those, the share drawn from full-question templates

# Slot fillers per domain: templates name them in braces.
SLOTS = {
    'banking': {
        'account': ('checking', 'savings', 'joint', 'business', 'student'),
        'amount': ('$50', '200 dollars', '75 pounds', '1000 euros', '$12.50', 'a hundred bucks'),
        'payee': ('my landlord', 'my sister', 'Alex', 'my roommate', 'Jordan', 'my dad'),
        'bill': ('electricity', 'water', 'phone', 'internet', 'gas', 'credit card'),
        'pair': ('dollars to euros', 'pounds to yen', 'euros to pesos', 'dollars to rupees', 'yen to dollars'),
        'card': ('debit card', 'credit card', 'visa', 'bank card', 'mastercard'),
        'merchant': ('amazon', 'a coffee shop', 'the gym', 'an online store', 'a gas station', 'netflix'),
    },
    'travel': {
        'city': ('lisbon', 'tokyo', 'denver', 'nairobi', 'oslo', 'lima', 'hanoi'),
        'date': ('next friday', 'tomorrow', 'march 3rd', 'this weekend', 'the 14th'),
        'airline': ('united', 'lufthansa', 'delta', 'air canada', 'ryanair'),
        'flight': ('UA 212', 'DL 88', 'flight 450', 'LH 401', 'my flight'),
        'nights': ('two nights', 'a week', 'three nights', 'one night', 'the weekend'),
        'country': ('japan', 'brazil', 'india', 'kenya', 'canada', 'vietnam'),
        'car': ('an SUV', 'a compact car', 'a minivan', 'a convertible', 'an electric car'),
        'booking': ('hotel booking', 'flight', 'car rental', 'reservation', 'trip'),
    },
    'home': {
        'room': ('kitchen', 'living room', 'bedroom', 'hallway', 'garage', 'office', 'bathroom'),
        'temp': ('68 degrees', '21 degrees', '72', '19 celsius', '75 fahrenheit'),
        'door': ('front door', 'back door', 'garage door', 'side gate', 'patio door'),
        'camera': ('front porch', 'backyard', 'driveway', 'nursery', 'side yard'),
        'zone': ('front lawn', 'vegetable beds', 'backyard', 'flower beds', 'side garden'),
        'minutes': ('10 minutes', '20 minutes', 'half an hour', '15 minutes'),
    },
    'cooking': {
        'dish': ('lasagna', 'pad thai', 'banana bread', 'chicken curry', 'risotto', 'pancakes', 'chili'),
        'ingredient': ('buttermilk', 'eggs', 'butter', 'heavy cream', 'brown sugar', 'soy sauce'),
        'conv': ('cups to grams', 'tablespoons to milliliters', 'ounces to grams', 'fahrenheit to celsius',
                 'teaspoons to tablespoons'),
        'minutes': ('10 minutes', '25 minutes', 'half an hour', '45 minutes', '8 minutes'),
        'food': ('salmon', 'a whole chicken', 'rice', 'hard boiled eggs', 'a turkey', 'pork chops'),
        'leftover': ('cooked rice', 'soup', 'leftover pizza', 'chili', 'fresh pasta', 'opened milk'),
    },
    'fitness': {
        'activity': ('a 5k run', '30 minutes of cycling', 'a swim', 'yoga', 'weightlifting', 'a hike'),
        'body': ('legs', 'upper body', 'core', 'back', 'shoulders', 'arms'),
        'goal': ('walk 10000 steps a day', 'lose 5 pounds', 'run a marathon', 'bench 200', 'run 3 times a week'),
        'class': ('spin', 'pilates', 'zumba', 'crossfit', 'hot yoga', 'boxing'),
        'period': ('today', 'this week', 'yesterday', 'since monday', 'this month'),
    },
    'music': {
        'song': ('bohemian rhapsody', 'hey jude', 'shake it off', 'clair de lune', 'take five', 'hello'),
        'artist': ('taylor swift', 'the beatles', 'miles davis', 'adele', 'bts', 'queen'),
        'genre': ('jazz', 'lo-fi', 'classical', 'country', 'hip hop', 'reggae'),
        'playlist': ('road trip', 'workout', 'sunday morning', 'focus', 'dinner party'),
        'level': ('50 percent', 'a bit', 'level 7', 'max', 'halfway'),
    },
    'work': {
        'person': ('my manager', 'the design team', 'priya', 'marcus', 'the client', 'hr'),
        'day': ('tomorrow', 'monday', 'thursday afternoon', 'next week', 'friday'),
        'time': ('3pm', '10:30', 'noon', '9 in the morning', '4:15'),
        'topic': ('the budget', 'the quarterly review', 'the launch', 'the contract', 'hiring'),
        'task': ('submit the report', 'call the vendor', 'renew my badge', 'review the slides', 'book a room'),
        'expense': ('taxi receipts', 'the hotel bill', 'client lunch', 'conference fee', 'mileage'),
    },
    'shopping': {
        'item': ('running shoes', 'a phone case', 'the blue jacket', 'headphones', 'a desk lamp', 'paper towels'),
        'store': ('target', 'the mall', 'ikea', 'the hardware store', 'walmart', 'costco'),
        'code': ('SAVE10', 'SPRING25', 'WELCOME5', 'FREESHIP', 'VIP20'),
    },
    'auto': {
        'car': ('my honda', 'the truck', 'my civic', 'the minivan', 'my corolla', 'the car'),
        'tire': ('front left', 'rear right', 'all four', 'front right', 'spare'),
        'place': ('nearby', 'on the way home', 'near the airport', 'by exit 12', 'around here'),
        'fuel': ('diesel', 'regular', 'premium', 'gas', 'e85'),
    },
    'health': {
        'doctor': ('dentist', 'dermatologist', 'my gp', 'a pediatrician', 'an eye doctor', 'my cardiologist'),
        'med': ('lisinopril', 'my inhaler', 'ibuprofen', 'metformin', 'allergy pills', 'birth control'),
        'symptom': ('a headache', 'a sore throat', 'a rash', 'a fever', 'back pain', 'dizziness'),
        'vaccine': ('flu shot', 'tetanus booster', 'covid booster', 'shingles vaccine', 'hepatitis b shot'),
        'time': ('8am', 'bedtime', 'every morning', 'noon', 'after dinner'),
        'service': ('physical therapy', 'an mri', 'dental cleaning', 'therapy sessions', 'glasses'),
    },
}

# (intent, description, action templates (verb phrases), question templates (whole utterances))
INTENTS = {
    'banking': (
        ('check_balance', 'ask how much money is in an account',
         ('check the balance on my {account} account', 'show me my {account} balance',
          'tell me how much is in my {account} account'),
         ('how much money do i have in {account}', "what's my {account} account balance",
          'whats left in my {account} account')),
        ('transfer_money', 'move money between accounts or to another person',
         ('send {amount} to {payee}', 'transfer {amount} to {payee}',
          'move {amount} from {account} to {payee}'),
         ('how do i send {amount} to {payee}', 'can {payee} get {amount} from my {account} account')),
        ('report_lost_card', 'report a lost or stolen card and block it',
         ('report my {card} as lost', 'block my stolen {card}', 'cancel my {card} because i lost it'),
         ('i lost my {card}, what do i do', 'someone stole my {card}', 'where is my {card}, i think i lost it')),
        ('pay_bill', 'pay a utility or other bill',
         ('pay my {bill} bill', 'pay the {bill} bill from {account}', 'settle my {bill} bill'),
         ('is my {bill} bill paid', 'when is the {bill} bill due')),
        ('exchange_rate', 'ask the exchange rate between currencies',
         ('convert {pair}', 'give me the exchange rate for {pair}', 'look up the rate {pair}'),
         ("what's the rate {pair} today", 'how much is it {pair} right now')),
        ('dispute_charge', 'dispute an unrecognised or wrong charge',
         ('dispute the charge from {merchant}', 'flag the {merchant} transaction on my {card}',
          'get my money back from {merchant}'),
         ("i don't recognise a charge from {merchant}", '{merchant} charged me twice on my {card}')),
        ('open_account', 'open a new bank account',
         ('open a {account} account', 'set up a new {account} account', 'get me a new {account} account'),
         ('what do i need to open a {account} account', 'how can i get a {account} account')),
    ),
    'travel': (
        ('book_flight', 'book a plane ticket',
         ('book a flight to {city} {date}', 'get me a ticket to {city} on {airline}',
          'find flights to {city} for {date}'),
         ('are there any {airline} flights to {city} {date}', 'how much is a flight to {city}')),
        ('cancel_reservation', 'cancel an existing travel booking',
         ('cancel my {booking}', 'cancel the {booking} for {date}', 'call off my {booking} to {city}'),
         ('can i still cancel my {booking}', 'will i get a refund if i cancel my {booking}')),
        ('flight_status', 'ask whether a flight is on time, delayed or boarding',
         ('check the status of {flight}', 'tell me if {flight} is delayed', 'track {flight}'),
         ('is {flight} on time', 'has {flight} landed yet', 'what gate is {flight} leaving from')),
        ('book_hotel', 'reserve a hotel room',
         ('book a hotel in {city} for {nights}', 'find me a room in {city} {date}',
          'reserve a hotel near the {city} airport'),
         ('any hotels free in {city} {date}', 'where can i stay in {city} for {nights}')),
        ('baggage_allowance', 'ask how much luggage is allowed',
         ('tell me the bag limit on {airline}', 'check the baggage allowance for {flight}'),
         ('how many bags can i take on {airline}', 'how heavy can my suitcase be on {airline}',
          'is a carry on free with {airline}')),
        ('visa_requirements', 'ask whether a visa is needed to enter a country',
         ('check if i need a visa for {country}', 'look up visa rules for {country}',
          'tell me the entry requirements for {country}'),
         ('do i need a visa to go to {country}', 'what documents do i need for {country}')),
        ('car_rental', 'rent a car',
         ('rent {car} in {city}', 'book {car} for {date}', 'reserve {car} at the {city} airport'),
         ('how much is {car} to rent in {city}', 'can i pick up {car} {date}')),
    ),
    'home': (
        ('lights_on', 'turn lights on',
         ('turn on the {room} lights', 'switch the lights on in the {room}', 'light up the {room}'),
         ("it's too dark in the {room}", 'can we get some light in the {room}')),
        ('lights_off', 'turn lights off',
         ('turn off the {room} lights', 'switch the {room} lights off', 'kill the lights in the {room}'),
         ('why are the {room} lights still on', 'are the lights off in the {room}')),
        ('set_thermostat', 'change the heating or cooling temperature',
         ('set the thermostat to {temp}', 'make the {room} {temp}', 'change the temperature to {temp}'),
         ("it's freezing in the {room}", 'why is the {room} so hot')),
        ('lock_door', 'lock a door',
         ('lock the {door}', 'make sure the {door} is locked', 'secure the {door}'),
         ('did i lock the {door}', 'is the {door} locked')),
        ('start_vacuum', 'start the robot vacuum',
         ('vacuum the {room}', 'start the robot vacuum in the {room}', 'run the vacuum for {minutes}'),
         ('can the robot clean the {room}', 'when did the vacuum last do the {room}')),
        ('show_camera', 'show a security camera feed',
         ('show me the {camera} camera', 'pull up the {camera} feed', 'open the camera on the {camera}'),
         ("what's happening on the {camera}", 'who is at the {camera}')),
        ('water_garden', 'run the sprinklers',
         ('water the {zone}', 'turn on the sprinklers in the {zone}', 'run the {zone} sprinklers for {minutes}'),
         ('has the {zone} been watered today', 'does the {zone} need water')),
    ),
    'cooking': (
        ('find_recipe', 'find a recipe for a dish',
         ('find me a recipe for {dish}', 'show me how to make {dish}', 'pull up a {dish} recipe'),
         ('how do you make {dish}', "what's a good recipe for {dish}")),
        ('ingredient_substitute', 'ask what can replace an ingredient',
         ('suggest a substitute for {ingredient}', 'find a replacement for {ingredient} in {dish}'),
         ('what can i use instead of {ingredient}', "i'm out of {ingredient}, what else works",
          'can i make {dish} without {ingredient}')),
        ('convert_units', 'convert cooking measurements',
         ('convert {conv}', 'change this recipe from {conv}', 'do the math on {conv}'),
         ('how do i go from {conv}', 'what is 2 cups in grams', 'how many tablespoons in a quarter cup')),
        ('cooking_timer', 'set a kitchen timer',
         ('set a timer for {minutes}', 'start a {minutes} timer for the {dish}',
          'remind me in {minutes} to check the {dish}'),
         ('can you time {minutes} for the {dish}',)),
        ('cooking_time', 'ask how long to cook a food',
         ('tell me how long to roast {food}', 'look up the cooking time for {food}'),
         ('how long should i bake {food}', 'how long does {food} take in the oven', 'when is {food} done')),
        ('food_storage', 'ask how long food keeps or how to store it',
         ('tell me how long {leftover} keeps', 'check if {leftover} is still good after 4 days'),
         ('how long does {leftover} last in the fridge', 'can i freeze {leftover}',
          'is week old {leftover} safe')),
        ('nutrition_info', 'ask about calories or nutrients in a food',
         ('count the calories in {dish}', 'show the nutrition facts for {food}', 'look up protein in {food}'),
         ('how many calories are in {dish}', 'is {food} healthy', 'how much protein does {food} have')),
    ),
    'fitness': (
        ('log_workout', 'record a completed workout',
         ('log {activity}', 'record {activity} for {period}', 'add {activity} to my workout history'),
         ('i just did {activity}, can you save it', 'did my {activity} get logged')),
        ('workout_plan', 'ask for a workout routine for a body area',
         ('give me a {body} workout', 'make me a routine for my {body}', 'plan a {body} session'),
         ('what exercises are good for my {body}', 'how should i train {body}')),
        ('step_count', 'ask how many steps were walked',
         ('show my step count for {period}', 'tell me my steps {period}', 'count my steps {period}'),
         ('how many steps did i take {period}', 'did i walk a lot {period}')),
        ('heart_rate', 'ask for heart rate readings',
         ('check my heart rate', 'show my resting heart rate for {period}', 'measure my pulse'),
         ("what's my heart rate right now", 'how high did my heart rate get during {activity}')),
        ('fitness_goal', 'set or change a fitness goal',
         ('set a goal to {goal}', 'change my goal to {goal}', 'make it my goal to {goal}'),
         ('can you track my goal to {goal}', 'how am i doing on my goal to {goal}')),
        ('book_class', 'book a group fitness class',
         ('book a {class} class {period}', 'sign me up for {class}', 'reserve a spot in {class}'),
         ('is there a {class} class {period}', 'are there spots left in {class}')),
        ('stretching_routine', 'ask for stretches or a cool-down',
         ('show me stretches for my {body}', 'give me a cool down after {activity}', 'loosen up my {body}'),
         ('how do i stretch my {body}', 'my {body} is tight after {activity}, any stretches')),
    ),
    'music': (
        ('play_song', 'play a song, artist or genre',
         ('play {song}', 'put on some {artist}', 'play {genre} music', 'play {song} by {artist}'),
         ('can we listen to {artist}', 'got any {genre}')),
        ('pause_music', 'pause or stop playback',
         ('pause the music', 'stop playing {song}', 'pause {artist}', 'stop the {genre}'),
         ('can you stop the song', 'could the music stop for a sec')),
        ('skip_track', 'skip to the next track',
         ('skip this song', 'go to the next track', 'skip {song}', 'play the next {artist} song'),
         ('can we hear something other than {song}', "i don't like this {genre} track, next one")),
        ('set_volume', 'change the volume',
         ('turn the volume to {level}', 'turn it up {level}', 'lower the volume {level}',
          'set the music volume to {level}'),
         ('can you make {song} louder', 'why is the music so quiet')),
        ('create_playlist', 'make a new playlist',
         ('make a {playlist} playlist', 'create a playlist called {playlist}',
          'start a {genre} playlist for {playlist}'),
         ('can you build me a {playlist} mix with {artist}',)),
        ('identify_song', 'ask what song is playing',
         ('tell me what song this is', 'identify this track', 'name this {genre} song'),
         ('what song is playing', 'who sings this', 'is this {artist}', 'what is this {genre} tune called')),
        ('find_lyrics', 'ask for the lyrics of a song',
         ('show me the lyrics to {song}', 'pull up the words for {song}', 'find the lyrics of {song} by {artist}'),
         ('what are the words to {song}', 'how does {song} go')),
    ),
    'work': (
        ('schedule_meeting', 'set up a meeting',
         ('schedule a meeting with {person} {day} at {time}', 'set up a call with {person} about {topic}',
          'book time with {person} {day}'),
         ('is {person} free {day} at {time}', 'when can i meet {person} about {topic}')),
        ('cancel_meeting', 'cancel a scheduled meeting',
         ('cancel my meeting with {person}', 'call off the {topic} meeting {day}', 'drop the {time} meeting'),
         ('can the {topic} meeting be cancelled', 'do i still have to go to the {time} with {person}')),
        ('check_calendar', 'ask what is on the calendar',
         ('show my calendar for {day}', 'read out my schedule {day}', 'list my meetings {day}'),
         ("what's on my calendar {day}", 'am i busy {day} at {time}', 'what do i have at {time}')),
        ('send_email', 'write and send an email',
         ('email {person} about {topic}', 'send a message to {person}',
          'draft an email to {person} about {topic}'),
         ('can you write to {person} that i am running late',)),
        ('request_time_off', 'ask for vacation or leave',
         ('request {day} off', 'book vacation for {day}', 'put in a leave request for {day}'),
         ('how many vacation days do i have left', 'can i take {day} off')),
        ('set_reminder', 'set a reminder for a task',
         ('remind me to {task} {day}', 'set a reminder to {task} at {time}', 'make sure i remember to {task}'),
         ('can you remind me {day} to {task}',)),
        ('expense_report', 'file or ask about a work expense',
         ('file my {expense}', 'submit {expense} for reimbursement', 'add {expense} to my expense report'),
         ('how do i claim {expense}', 'has my {expense} been reimbursed')),
    ),
    'shopping': (
        ('track_order', 'ask where an order is',
         ('track my {item} order', 'show me where my {item} is', 'check the delivery status of my {item}'),
         ('when will my {item} arrive', 'where is my package', 'has the {item} shipped yet')),
        ('return_item', 'return a purchased item',
         ('return the {item}', 'start a return for {item}', 'send back {item} i bought at {store}'),
         ('how do i return {item}', 'can i return {item} to {store} without a receipt')),
        ('add_to_cart', 'put an item in the shopping cart',
         ('add {item} to my cart', 'put {item} in the basket', 'add two {item} to my cart'),
         ('can you add {item} to my {store} order',)),
        ('compare_prices', 'compare prices across stores',
         ('compare prices for {item}', 'find the cheapest {item}',
          'check if {store} has a better price on {item}'),
         ('where is {item} cheapest', 'is {item} cheaper at {store}')),
        ('apply_coupon', 'use a discount code',
         ('apply the code {code}', 'use coupon {code} on my order', 'add promo {code} at checkout'),
         ('does {code} work at {store}', 'why is {code} not working')),
        ('cancel_order', 'cancel an order not yet delivered',
         ('cancel my order of {item}', 'stop the {item} order', 'cancel the {store} order'),
         ('is it too late to cancel the {item}',)),
        ('store_hours', 'ask when a store is open',
         ('tell me the opening hours of {store}', 'check when {store} closes', 'look up {store} hours'),
         ('what time does {store} open', 'is {store} open on sunday', 'when does {store} close tonight')),
    ),
    'auto': (
        ('oil_change', 'book or ask about an oil change',
         ('schedule an oil change for {car}', 'book {car} in for an oil change', 'find an oil change {place}'),
         ('when is {car} due for an oil change', 'how often should i change the oil in {car}')),
        ('tire_pressure', 'check tire pressure',
         ('check the tire pressure on {car}', 'show me the {tire} tire pressure',
          'read the pressure in the {tire} tire'),
         ('is the {tire} tire low', 'what should the tire pressure be on {car}')),
        ('engine_warning', 'ask about a dashboard warning light',
         ('diagnose the check engine light on {car}', 'explain the warning light in {car}',
          'read the engine code on {car}'),
         ('why is the check engine light on in {car}', 'is it safe to drive {car} with the engine light on')),
        ('find_gas_station', 'find a place to refuel',
         ('find a gas station {place}', 'take me to the nearest {fuel} pump', 'show cheap {fuel} {place}'),
         ('where can i get {fuel} {place}', "i'm almost out of gas, where's a station")),
        ('roadside_assistance', 'call for help with a breakdown',
         ('call a tow truck for {car}', 'send roadside help {place}', 'get someone to jump start {car}'),
         ('{car} broke down {place}, who do i call', 'i have a flat {tire} tire, can someone come')),
        ('renew_registration', 'renew vehicle registration',
         ('renew the registration for {car}', 'pay the registration fee on {car}', 'update the plates on {car}'),
         ('when does the registration on {car} expire', 'is {car} still registered')),
        ('car_wash', 'find or book a car wash',
         ('book a car wash for {car}', 'find a car wash {place}', 'get {car} detailed'),
         ('where can i wash {car} {place}', 'how much is a car wash {place}')),
    ),
    'health': (
        ('book_doctor', 'make a medical appointment',
         ('book an appointment with {doctor}', 'schedule a visit to {doctor}', 'get an appointment with {doctor}'),
         ('when is {doctor} available', 'can i see {doctor} this week')),
        ('refill_prescription', 'refill a prescription',
         ('refill my {med}', 'order more {med}', 'renew the prescription for {med}'),
         ("i'm running out of {med}", 'is my {med} refill ready')),
        ('symptom_check', 'describe a symptom and ask what to do',
         ('check my symptoms, i have {symptom}', 'help me figure out why i have {symptom}'),
         ('i have {symptom}, should i worry', 'what causes {symptom}', 'is {symptom} a sign of flu')),
        ('find_pharmacy', 'find a pharmacy',
         ('find a pharmacy that sells {med}', 'show pharmacies open now', 'find the nearest drugstore'),
         ('where can i pick up {med} tonight', 'which pharmacy has {med} in stock')),
        ('medication_reminder', 'set a reminder to take medication',
         ('remind me to take {med} at {time}', 'set a pill reminder for {time}', 'alert me {time} for my {med}'),
         ('can you remind me about {med} {time}',)),
        ('vaccine_info', 'ask about vaccines and vaccination',
         ('book my {vaccine}', 'find where to get a {vaccine}', 'tell me about the {vaccine}'),
         ('when should i get the {vaccine}', 'am i due for a {vaccine}', 'does the {vaccine} have side effects')),
        ('insurance_coverage', 'ask whether insurance covers a service',
         ('check if my insurance covers {service}', 'look up my coverage for {service}'),
         ('does my plan pay for {service}', 'is {service} covered',
          'how much will {service} cost with insurance')),
    ),
}

# Paraphrase wrappers for action templates: commands, questions and indirect requests. The assistant does
# the action in the first group and the user in the second, so an action with "me" in it ("show me ...")
# only takes the first ("i need to show me ..." is not how people talk).
ASSISTANT_WRAPPERS = ('{a}', '{a} please', 'please {a}', 'can you {a}?', 'could you {a} for me?', 'hey, {a}',
                      'i was wondering if you could {a}', 'would you {a}?', 'go ahead and {a}', 'quick one: {a}',
                      "i'd appreciate it if you could {a}", 'any chance you could {a}?')
SELF_WRAPPERS = ("i'd like to {a}", 'i need to {a}', 'i want to {a}', 'help me {a}', 'is it possible to {a}?')
P_TYPO, P_CAPITAL, P_UPPER, P_STOP, P_QMARK = 0.12, 0.35, 0.03, 0.25, 0.6


def classes() -> list[dict]:
  """Every class: {'label', 'label_name', 'domain', 'description'}; labels are stable across seeds."""
  out = []
  for domain, intents in INTENTS.items():
    for name, desc, _, _ in intents:
      out.append({'label': len(out), 'label_name': f'{domain}.{name}', 'domain': domain, 'description': desc})
  return out


def stages(seed: int = 0, n_stages: int = N_STAGES) -> list[list[str]]:
  """Label names in `n_stages` groups of new classes, a seeded shuffle of all classes."""
  names = [c['label_name'] for c in classes()]
  order = np.random.default_rng([seed, 0x7374]).permutation(len(names))
  return [[names[i] for i in chunk] for chunk in np.array_split(order, n_stages)]


def normalize(text: str) -> str:
  """De-duplication and split key: lower case, punctuation dropped, single spaces."""
  return ' '.join(''.join(c for c in text.lower() if c not in string.punctuation).split())


def _fill(template: str, slots: dict) -> list[str]:
  """Every filling of `template`'s slots, in a fixed order."""
  names = sorted(set(re.findall(r'{(\w+)}', template)))
  return [template.format(**dict(zip(names, vals))) for vals in itertools.product(*(slots[n] for n in names))]


def _candidates(domain: str, actions: tuple, questions: tuple) -> tuple[list[str], list[str]]:
  slots = SLOTS[domain]
  acts = [w.format(a=a) for t in actions for a in _fill(t, slots)
          for w in ASSISTANT_WRAPPERS + (() if re.search(r'\bme\b', t) else SELF_WRAPPERS)]
  return acts, [q for t in questions for q in _fill(t, slots)]


def _typo(text: str, rng: np.random.Generator) -> str:
  """Swap two adjacent letters inside one word of at least 4 letters (if there is one)."""
  words = text.split(' ')
  idx = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
  if not idx:
    return text
  i = idx[int(rng.integers(len(idx)))]
  w = words[i]
  j = int(rng.integers(1, len(w) - 2))
  words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
  return ' '.join(words)


def _surface(text: str, is_q: bool, rng: np.random.Generator) -> str:
  """Occasional typo, capitalisation, shouting and final punctuation, as users type."""
  if rng.random() < P_TYPO:
    text = _typo(text, rng)
  r = rng.random()
  if r < P_UPPER:
    text = text.upper()
  elif r < P_UPPER + P_CAPITAL:
    text = text[:1].upper() + text[1:]
  if text[-1] not in '?.!' and rng.random() < (P_QMARK if is_q else P_STOP):
    text += '?' if is_q else '.'
  return text


def _sample(pool: list[str], k: int, taken: set, rng: np.random.Generator) -> list[str]:
  out = []
  for i in rng.permutation(len(pool)):
    if len(out) == k:
      break
    key = normalize(pool[i])
    if key not in taken:
      taken.add(key)
      out.append(pool[i])
  return out


def _generate_all(seed: int = 0) -> list[dict]:
  """Every utterance of every split, tagged with its 'split'; only `generate` (which guards 'test') calls it."""
  rng = np.random.default_rng([seed, 0x696e])
  stage_of = {n: s for s, names in enumerate(stages(seed)) for n in names}
  drawn: dict[int, list[tuple[str, bool]]] = {}  # label -> [(clean text, is a whole question)]
  for c, (domain, intent) in zip(classes(), ((d, i) for d, its in INTENTS.items() for i in its)):
    acts, qs = _candidates(domain, intent[2], intent[3])
    taken: set = set()
    chosen = _sample(qs, int(PER_CLASS * QUESTION_SHARE), taken, rng)
    drawn[c['label']] = [(t, True) for t in chosen] + [(t, False) for t in
                                                       _sample(acts, PER_CLASS - len(chosen), taken, rng)]
  owners: dict[str, set] = {}
  for label, texts in drawn.items():
    for t, _ in texts:
      owners.setdefault(normalize(t), set()).add(label)
  out, seen = [], set(owners)
  for c in classes():
    for j, (text, is_q) in enumerate(drawn[c['label']]):
      key = normalize(text)
      if len(owners[key]) > 1:
        continue  # the same words in two classes: ambiguous, so in neither
      surface = _surface(text, is_q, rng)
      if normalize(surface) != key:
        if normalize(surface) in seen:
          surface = text  # a typo that spells another utterance would cross splits: keep it clean
        seen.add(normalize(surface))
      out.append({'id': f'intents-s{seed}-{c["label"]:03d}-{j:03d}', 'text': surface,
                  'label': c['label'], 'label_name': c['label_name'], 'stage': stage_of[c['label_name']],
                  'split': assign_split(key, seed)})
  return out


def generate(split: str, seed: int = 0, allow_test: bool = False) -> list[dict]:
  """The utterances of `split`, ordered by stage then label; 'test' needs allow_test=True."""
  check_split(split, allow_test)
  rows = [r for r in _generate_all(seed) if r['split'] == split]
  return sorted(rows, key=lambda r: (r['stage'], r['label'], r['id']))

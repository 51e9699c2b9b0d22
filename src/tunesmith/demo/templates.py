"""Question templates over the clinic database, each with one canonical SQL form.

A small model has to learn the SQL, so every template writes it in ONE house style:
upper-case keywords, lower-case identifiers, single-quoted literals, no trailing semicolon,
table aliases only in joins (``patients p``, ``doctors d``, ``visits v``, ``prescriptions r``)
with the foreign key on the left of ``ON``, years as ``strftime('%Y', col) = '2021'``, and in
ranked queries the ORDER BY key is the last selected column. Slots range over the
database's own values (:mod:`.slots`); which fillings are asked is :mod:`.questions`' choice.
"""

from __future__ import annotations

from tunesmith.demo import clinic
from tunesmith.demo.slots import (
    MONTHS,
    SEX,
    YEARS,
    Template,
    birth_years,
    cities,
    derive,
    doctors,
    drugs,
    each,
    insurers,
    month_pairs,
    month_range,
    patient_names,
    reasons,
    specialties,
)

TEMPLATES: tuple[Template, ...] = (
    Template(
        "patients_in_city",
        (
            "List the names of patients who live in {city}.",
            "Which patients live in {city}?",
            "Show the first and last names of all patients from {city}.",
            "Who are the patients based in {city}?",
        ),
        "SELECT first_name, last_name FROM patients WHERE city = '{city}'",
        each(city=cities),
    ),
    Template(
        "patients_city_insurance",
        (
            "Which patients in {city} are insured by {insurance}?",
            "List the patients from {city} who have {insurance} insurance.",
            "Show the names of {insurance} patients living in {city}.",
            "Who lives in {city} and is covered by {insurance}?",
        ),
        "SELECT first_name, last_name FROM patients WHERE city = '{city}' "
        "AND insurance = '{insurance}'",
        each(city=cities, insurance=insurers),
    ),
    Template(
        "count_patients_city_sex",
        (
            "How many {sex_adj} patients live in {city}?",
            "Count the {sex_adj} patients from {city}.",
            "What is the number of {sex_noun} among the patients in {city}?",
            "How many patients in {city} are {sex_noun}?",
        ),
        "SELECT COUNT(*) FROM patients WHERE city = '{city}' AND sex = '{sex}'",
        derive(
            each(city=cities, sex=["F", "M"]),
            sex_adj=lambda s: SEX[s["sex"]][0],
            sex_noun=lambda s: SEX[s["sex"]][1],
        ),
    ),
    Template(
        "count_patients_insurance",
        (
            "How many patients are covered by {insurance}?",
            "How many patients have {insurance} insurance?",
            "Count the patients insured by {insurance}.",
            "What is the number of {insurance} patients?",
        ),
        "SELECT COUNT(*) FROM patients WHERE insurance = '{insurance}'",
        each(insurance=insurers),
    ),
    Template(
        "doctors_by_specialty",
        (
            "Which doctors specialize in {specialty}?",
            "List the doctors working in {specialty}.",
            "Who are the {specialty} doctors?",
            "Show the names of all doctors whose specialty is {specialty}.",
        ),
        "SELECT name FROM doctors WHERE specialty = '{specialty}'",
        each(specialty=specialties),
    ),
    Template(
        "doctors_hired_after",
        (
            "Which doctors were hired after {year}?",
            "List the doctors hired later than {year}.",
            "Name the doctors who joined the clinic after {year}.",
            "Who among the doctors was hired after the year {year}?",
        ),
        "SELECT name FROM doctors WHERE strftime('%Y', hired_on) > '{year}'",
        each(year=[str(y) for y in range(1995, 2023)]),
    ),
    Template(
        "count_patients_born_before",
        (
            "How many patients in {city} were born before {year}?",
            "Count the patients from {city} born earlier than {year}.",
            "What is the number of {city} patients born before {year}?",
            "How many {city} residents among the patients were born before {year}?",
        ),
        "SELECT COUNT(*) FROM patients WHERE city = '{city}' "
        "AND strftime('%Y', birth_date) < '{year}'",
        each(city=cities, year=[str(y) for y in range(1950, 2015, 5)]),
    ),
    Template(
        "patients_born_in_year",
        (
            "Which patients were born in {year}?",
            "List the patients whose birth year is {year}.",
            "Show the names of patients born in {year}.",
            "Who among the patients was born in {year}?",
        ),
        "SELECT first_name, last_name FROM patients WHERE strftime('%Y', birth_date) = '{year}'",
        each(year=birth_years),
    ),
    Template(
        "visits_cost_between",
        (
            "List the ids of visits that cost between {lo} and {hi} dollars.",
            "Which visits cost from {lo} to {hi} dollars?",
            "Show the visit ids with a cost between ${lo} and ${hi}.",
            "Find the visits whose cost is between {lo} and {hi}.",
        ),
        "SELECT id FROM visits WHERE cost BETWEEN {lo} AND {hi}",
        derive(each(lo=list(range(60, 500, 10)), width=[5, 10]), hi=lambda s: s["lo"] + s["width"]),
    ),
    Template(
        "count_visits_year",
        (
            "How many visits took place in {year}?",
            "Count the visits in {year}.",
            "What was the number of visits during {year}?",
            "How many visits did the clinic have in {year}?",
        ),
        "SELECT COUNT(*) FROM visits WHERE strftime('%Y', visit_date) = '{year}'",
        each(year=YEARS),
    ),
    Template(
        "count_visits_reason_year",
        (
            "How many visits for {reason} were there in {year}?",
            "Count the {reason} visits in {year}.",
            "In {year}, how many visits were for {reason}?",
            "What was the number of visits with reason {reason} in {year}?",
        ),
        "SELECT COUNT(*) FROM visits WHERE reason = '{reason}' "
        "AND strftime('%Y', visit_date) = '{year}'",
        each(reason=reasons, year=YEARS),
    ),
    Template(
        "avg_cost_reason",
        (
            "What is the average cost of a visit for {reason}?",
            "How much does one {reason} visit cost on average?",
            "Give the mean cost of visits for {reason}.",
            "On average, what do {reason} visits cost?",
        ),
        "SELECT AVG(cost) FROM visits WHERE reason = '{reason}'",
        each(reason=reasons),
    ),
    Template(
        "count_visits_between_months",
        (
            "How many visits happened between {m1_name} and {m2_name} {year}?",
            "Count the visits from {m1_name} to {m2_name} {year}.",
            "How many visits were there from the start of {m1_name} {year} to the end of {m2_name} {year}?",
            "What is the number of visits between {m1_name} {year} and {m2_name} {year}?",
        ),
        "SELECT COUNT(*) FROM visits WHERE visit_date BETWEEN '{start}' AND '{end}'",
        derive(
            derive(
                each(year=YEARS, months=month_pairs),
                m1=lambda s: s["months"][0],
                m2=lambda s: s["months"][1],
            ),
            m1_name=lambda s: MONTHS[s["m1"] - 1],
            m2_name=lambda s: MONTHS[s["m2"] - 1],
            start=lambda s: month_range(s)[0],
            end=lambda s: month_range(s)[1],
        ),
    ),
    Template(
        "total_cost_patient",
        (
            "How much did {first} {last} pay for visits in total?",
            "What is the total cost of all visits by {first} {last}?",
            "Sum up the visit costs of patient {first} {last}.",
            "How much have the visits of {first} {last} cost altogether?",
        ),
        "SELECT SUM(v.cost) FROM visits v JOIN patients p ON v.patient_id = p.id "
        "WHERE p.first_name = '{first}' AND p.last_name = '{last}'",
        patient_names,
    ),
    Template(
        "count_visits_doctor_year",
        (
            "How many visits did {doctor} have in {year}?",
            "How many patients did {doctor} see in {year}?",
            "Count the visits with {doctor} during {year}.",
            "In {year}, how many visits were handled by {doctor}?",
        ),
        "SELECT COUNT(*) FROM visits v JOIN doctors d ON v.doctor_id = d.id "
        "WHERE d.name = '{doctor}' AND strftime('%Y', v.visit_date) = '{year}'",
        each(doctor=doctors, year=YEARS),
    ),
    Template(
        "extreme_cost_specialty",
        (
            "What is the {adj} visit cost in {specialty}?",
            "How much did the {sup} {specialty} visit cost?",
            "Give the cost of the {sup} visit in {specialty}.",
            "Among {specialty} visits, what was the {adj} cost?",
        ),
        "SELECT {agg}(v.cost) FROM visits v JOIN doctors d ON v.doctor_id = d.id "
        "WHERE d.specialty = '{specialty}'",
        derive(
            each(specialty=specialties, agg=["MIN", "MAX"]),
            adj=lambda s: {"MIN": "lowest", "MAX": "highest"}[s["agg"]],
            sup=lambda s: {"MIN": "cheapest", "MAX": "most expensive"}[s["agg"]],
        ),
    ),
    Template(
        "extreme_dose_drug",
        (
            "What is the {adj} dose of {drug} prescribed, in mg?",
            "What is the {adj} prescribed dose of {drug}?",
            "Give the {adj} {drug} dose in milligrams.",
            "How many mg is the {adj} dose of {drug} that was prescribed?",
        ),
        "SELECT {agg}(dose_mg) FROM prescriptions WHERE drug = '{drug}'",
        derive(
            each(drug=drugs, agg=["MIN", "MAX"]),
            adj=lambda s: {"MIN": "smallest", "MAX": "largest"}[s["agg"]],
        ),
    ),
    Template(
        "avg_days_drug",
        (
            "For how many days is {drug} prescribed on average?",
            "What is the average length in days of {drug} prescriptions?",
            "On average, how long are {drug} courses in days?",
            "Give the mean number of days of prescriptions for {drug}.",
        ),
        "SELECT AVG(days) FROM prescriptions WHERE drug = '{drug}'",
        each(drug=drugs),
    ),
    Template(
        "long_prescriptions",
        (
            "Which prescriptions of {drug} last longer than {days} days?",
            "List the ids of {drug} prescriptions longer than {days} days.",
            "Show the {drug} prescriptions with more than {days} days.",
            "Find prescriptions for {drug} that run over {days} days.",
        ),
        "SELECT id FROM prescriptions WHERE drug = '{drug}' AND days > {days}",
        each(drug=drugs, days=list(clinic.COURSE_DAYS[:-1])),
    ),
    Template(
        "count_patients_drug",
        (
            "How many different patients were prescribed {drug}?",
            "How many distinct patients received {drug}?",
            "Count the patients who got a prescription for {drug}.",
            "What is the number of unique patients given {drug}?",
        ),
        "SELECT COUNT(DISTINCT v.patient_id) FROM prescriptions r "
        "JOIN visits v ON r.visit_id = v.id WHERE r.drug = '{drug}'",
        each(drug=drugs),
    ),
    Template(
        "patients_per_city_insurance",
        (
            "How many patients with {insurance} insurance live in each city?",
            "For each city, count the patients covered by {insurance}.",
            "Give the number of {insurance} patients per city.",
            "Break down the {insurance} patients by city.",
        ),
        "SELECT city, COUNT(*) FROM patients WHERE insurance = '{insurance}' GROUP BY city",
        each(insurance=insurers),
    ),
    Template(
        "doctors_per_specialty_city",
        (
            "How many doctors of each specialty work in {city}?",
            "For each specialty, count the doctors in {city}.",
            "Give the number of doctors per specialty in {city}.",
            "Break down the doctors in {city} by specialty.",
        ),
        "SELECT specialty, COUNT(*) FROM doctors WHERE city = '{city}' GROUP BY specialty",
        each(city=cities),
    ),
    Template(
        "avg_cost_per_specialty_year",
        (
            "What was the average visit cost for each specialty in {year}?",
            "For each specialty, give the mean visit cost in {year}.",
            "In {year}, what did a visit cost on average per specialty?",
            "Show the average cost of visits by specialty for {year}.",
        ),
        "SELECT d.specialty, AVG(v.cost) FROM visits v JOIN doctors d ON v.doctor_id = d.id "
        "WHERE strftime('%Y', v.visit_date) = '{year}' GROUP BY d.specialty",
        each(year=YEARS),
    ),
    Template(
        "visits_per_reason_city",
        (
            "How many visits did patients from {city} make for each reason?",
            "For patients living in {city}, count the visits per reason.",
            "Break down the visits of {city} patients by reason.",
            "Give the number of visits per reason for patients in {city}.",
        ),
        "SELECT v.reason, COUNT(*) FROM visits v JOIN patients p ON v.patient_id = p.id "
        "WHERE p.city = '{city}' GROUP BY v.reason",
        each(city=cities),
    ),
    Template(
        "top_cost_visits_year",
        (
            "What are the {k} most expensive visits in {year}?",
            "List the {k} costliest visits of {year} with their cost.",
            "Show the ids and costs of the top {k} visits by cost in {year}.",
            "Which {k} visits in {year} cost the most?",
        ),
        "SELECT id, cost FROM visits WHERE strftime('%Y', visit_date) = '{year}' "
        "ORDER BY cost DESC LIMIT {k}",
        each(year=YEARS, k=[3, 5, 10]),
    ),
    Template(
        "top_cost_visits_reason",
        (
            "What are the {k} most expensive visits for {reason}?",
            "List the {k} costliest {reason} visits with their cost.",
            "Show the ids and costs of the top {k} {reason} visits by cost.",
            "Which {k} visits for {reason} cost the most?",
        ),
        "SELECT id, cost FROM visits WHERE reason = '{reason}' ORDER BY cost DESC LIMIT {k}",
        each(reason=reasons, k=[3, 5, 10]),
    ),
    Template(
        "oldest_youngest_patients_city",
        (
            "Who are the {k} {adj} patients in {city}?",
            "List the {k} {adj} patients living in {city} with their birth dates.",
            "Show the {k} {adj} patients from {city}.",
            "Which {k} patients in {city} are the {adj}?",
        ),
        "SELECT first_name, last_name, birth_date FROM patients WHERE city = '{city}' "
        "ORDER BY birth_date{order} LIMIT {k}",
        derive(
            each(city=cities, adj=["oldest", "youngest"], k=[3, 5]),
            order=lambda s: "" if s["adj"] == "oldest" else " DESC",
        ),
    ),
    Template(
        "top_reasons_year",
        (
            "What were the {k} most common visit reasons in {year}?",
            "List the top {k} reasons for visits in {year} with their counts.",
            "Which {k} reasons brought patients in most often in {year}?",
            "In {year}, what were the {k} most frequent reasons for a visit?",
        ),
        "SELECT reason, COUNT(*) FROM visits WHERE strftime('%Y', visit_date) = '{year}' "
        "GROUP BY reason ORDER BY COUNT(*) DESC LIMIT {k}",
        each(year=YEARS, k=[2, 3, 4]),
    ),
)

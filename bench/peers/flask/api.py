# The original "comentarios" API (globo.com's classic test app), rewritten from the contract in
# DESIGN.md as the Flask peer of the benchmark: comments in an in-memory dict of lists keyed by
# '{}'.format(content_id), jsonify responses, /health-check. Run as the seeds do:
#   gunicorn -b 127.0.0.1:PORT api:app
from flask import Flask, jsonify, request

app = Flask(__name__)
comments = {}


@app.route('/api/comment/new', methods=['POST'])
def api_comment_new():
    request_data = request.get_json()

    email = request_data['email']
    comment = request_data['comment']
    content_id = '{}'.format(request_data['content_id'])

    new_comment = {
        'email': email,
        'comment': comment,
    }

    if content_id in comments:
        comments[content_id].append(new_comment)
    else:
        comments[content_id] = [new_comment]

    message = 'comment created and associated with content_id {}'.format(content_id)
    response = {
        'status': 'SUCCESS',
        'message': message,
    }
    return jsonify(response)


@app.route('/api/comment/list/<content_id>')
def api_comment_list(content_id):
    content_id = '{}'.format(content_id)

    if content_id in comments:
        return jsonify(comments[content_id])
    else:
        message = 'content_id {} not found'.format(content_id)
        response = {
            'status': 'NOT-FOUND',
            'message': message,
        }
        return jsonify(response), 404


@app.route('/health-check')
def api_health_check():
    message = 'its ok!'
    response = {
        'status': 'SUCCESS',
        'message': message,
    }
    return jsonify(response)
